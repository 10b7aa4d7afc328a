"""Where results go: a local folder or an object-store prefix, and the names written there."""
