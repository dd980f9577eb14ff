"""The agent's journal: one JSONL file, appended, every line fsynced before the next step.

Line kinds (all with ``time``):

- an iteration record (``iteration``, ``mode``, ``decision``, ``price_check``, ``portfolio``,
  ``fill`` or ``swap``; see :mod:`agent.live`). In execute mode a swap's record is written
  when the transaction is *signed*, before it is broadcast: ``swap.tx_hash``, ``swap.nonce``,
  ``swap.plan`` (amounts, deadline, notional), ``account``;
- a transaction event ``{"event": "tx", "tx_hash", "nonce", "account", "outcome", ...}`` for
  every later outcome: ``sent``, ``mined`` (``status`` 1, ``block``, ``gas_used``),
  ``reverted`` (``status`` 0), ``send_failed`` (``error``: the node's refusal), ``pending``
  (no receipt within ``receipt_timeout_s``), ``interrupted`` (Ctrl-C; ``broadcast``: whether
  it had been sent), ``expired`` (found on restart: never mined and past its deadline, so the
  router can no longer execute it);
- ``{"event": "interrupted"}``: Ctrl-C outside a transaction.

A transaction whose last outcome is ``signed``, ``sent``, ``pending`` or ``interrupted`` is
*unresolved*: :func:`agent.live.reconcile` settles it by hash on the next start, before any
new order. Keys and passphrases never reach the journal: only the account address.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agent.policies import History, Trade
from agent.portfolio import Portfolio
from apeagent.errors import UserError
from apeagent.redact import redact_obj

SIGNED = "signed"
RESOLVED = ("mined", "reverted", "send_failed", "expired")
NOT_SPENT = ("send_failed", "expired")  # outcomes that moved no funds and count no notional


class Journal:
    """Append-only JSONL journal; each line flushed and fsynced as it is written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        text = self.path.read_text() if self.path.exists() else ""
        self._cut = bool(text) and not text.endswith("\n")  # a crash cut the last line
        lines = text.splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                self.records.append(json.loads(line))
            except ValueError:
                # Only the last line can be cut short (a crash mid-write): skip that one.
                if n != len(lines):
                    raise UserError(
                        f"{self.path}:{n}: not a JSON line (is this an agent journal?)"
                    ) from None

    def append(self, rec: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(("\n" if self._cut else "") + json.dumps(redact_obj(rec), default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._cut = False
        self.records.append(rec)

    def last_portfolio(self, mode: str) -> Portfolio | None:
        for rec in reversed(self.records):
            if rec.get("mode") == mode and rec.get("portfolio", {}).get("raw"):
                return Portfolio.from_dict(rec["portfolio"]["raw"])
        return None

    def history(self) -> History:
        h = History()
        for rec in self.records:
            if not h.start_value_usdc and rec.get("portfolio"):
                h.start_value_usdc = rec["portfolio"].get("value_before_usdc", 0.0)
            f = rec.get("fill")
            if f:
                h.add(Trade(rec["time"], rec["decision"], f["eth_delta"], f["exec_price"]))
        return h

    def day_start_value(self, now: int, mode: str) -> float | None:
        """Value before the first iteration of the current UTC day (for the loss limit)."""
        day = now // 86400
        for rec in self.records:
            if (
                rec.get("mode") == mode
                and rec.get("time", 0) // 86400 == day
                and rec.get("portfolio")
            ):
                return rec["portfolio"].get("value_before_usdc")
        return None

    def transactions(self, account: str) -> dict[str, dict[str, Any]]:
        """Every transaction of ``account`` by hash: ``nonce``, ``deadline``, ``notional_usdc``,
        ``notional_eth``, ``time`` (signed) and ``outcome`` (the last one journaled)."""
        txs: dict[str, dict[str, Any]] = {}
        for rec in self.records:
            swap = rec.get("swap") or {}
            if swap.get("tx_hash") and rec.get("account") == account:
                plan = swap.get("plan") or {}
                txs[swap["tx_hash"]] = {
                    "tx_hash": swap["tx_hash"],
                    "nonce": swap["nonce"],
                    "deadline": plan.get("deadline", 0),
                    "notional_usdc": plan.get("notional_usdc", 0.0),
                    "notional_eth": plan.get("notional_eth", 0.0),
                    "time": rec.get("time", 0),
                    "outcome": SIGNED,
                }
            elif rec.get("event") == "tx" and rec.get("tx_hash") in txs:
                txs[rec["tx_hash"]]["outcome"] = rec["outcome"]
        return txs

    def unresolved(self, account: str) -> list[dict[str, Any]]:
        return [t for t in self.transactions(account).values() if t["outcome"] not in RESOLVED]

    def notional_today(self, account: str, now: int, unit: str = "USDC") -> float:
        """Notional (``unit`` USDC or ETH) of the swaps signed for ``account`` this UTC day
        (refused sends and expired transactions excluded)."""
        day = now // 86400
        key = {"USDC": "notional_usdc", "ETH": "notional_eth"}[unit]
        return sum(
            t[key]
            for t in self.transactions(account).values()
            if t["time"] // 86400 == day and t["outcome"] not in NOT_SPENT
        )

    def highest_used_nonce(self, account: str) -> int:
        """The highest nonce of a mined (or reverted) transaction of ``account``; -1: none."""
        used = [
            t["nonce"]
            for t in self.transactions(account).values()
            if t["outcome"] in ("mined", "reverted")
        ]
        return max(used, default=-1)
