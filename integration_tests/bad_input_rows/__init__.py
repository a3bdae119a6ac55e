"""Bad-input rows, one module per package (``ROWS: list[BadInput]``); see ``bad_input_harness``."""
