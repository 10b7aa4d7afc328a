"""What runs measured: the record schema and files, the verdict and its statistics, the report."""
