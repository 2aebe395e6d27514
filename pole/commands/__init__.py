"""The `pole` command's subcommands, one module per group; each exposes `register(subparsers)`."""
