"""What stands outside the server: the `pole` command, the demo, and clients of the API.

This package may import everything; nothing imports it.
"""
