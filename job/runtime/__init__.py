"""The runtime the training runs on: the device and its faults, CPU threads, memory metering, data-parallel
ranks and signals. Below everything that trains; imports nothing of the job but its errors."""
