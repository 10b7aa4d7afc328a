"""The data: labels, the sources read, seeded samples, tokens and batches."""
