"""The command lines (console scripts in setup.py). Importing this package quiets known third-party warnings."""

from tide_megatron.cli.quiet import quiet_third_party_warnings

quiet_third_party_warnings()
