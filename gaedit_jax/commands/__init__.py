"""The `gaedit` subcommands: one module per subcommand, each with `main(cfg: Config)` (parsing,
printing, exit codes). The only modules besides cli.py that import tyro or raise SystemExit; library
code never imports them. cli.py imports a module only when its subcommand runs."""
