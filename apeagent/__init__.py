"""apeagent kernel: config + presets, errors and the CLI boundary, atomic files, fast BLAS, the run layout, the pipeline runner and report. Imports no stage package."""
