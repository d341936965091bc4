"""The `prism-edge` console script: one command for the runtime's and the cost model's
subcommands (`python -m runtime ...` and `python -m costmodel ...` stay as they are)."""
