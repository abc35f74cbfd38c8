"""The prediction pipeline, free of any protocol: decode -> low-resolution view ->
attention -> sample -> extract -> features -> aggregate -> head, one module per stage."""
