"""Signal filters for the channels: chain stages and plain-Python designs; never do I/O."""
