"""Contract tests: the sandbox and the product against Microsoft's published contracts."""
