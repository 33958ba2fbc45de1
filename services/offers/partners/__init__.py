"""Partners: the registry (configuration and its schema), the answers' parsing, and the clients that call them."""
