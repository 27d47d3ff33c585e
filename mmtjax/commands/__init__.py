"""The command lines that are not top-level scripts, one module each.

A library module holds no command line; these modules parse their arguments
first and import the library only when there is work to do, so `--help` and
an argument error answer without loading JAX.

  python -m mmtjax.commands.predict   segment your own images (mmtjax.predict.Predictor)
  python -m mmtjax.commands.episodes  write a dataset's test episodes as a JSON-lines file
"""
