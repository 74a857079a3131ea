"""One module per `irvs` subcommand (see irvs_ros.cli)."""
