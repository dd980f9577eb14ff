"""The trading agent: policies, backtest, paper and live loop, execution, portfolio (above every stage)."""
