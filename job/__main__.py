"""`python -m job`: thread and memory settings first (they must precede `import paddle`), then the CLI."""

import warnings

from job.device import keep_freed_memory, set_cpu_thread_defaults

set_cpu_thread_defaults()
keep_freed_memory()
# Paddle's import warns about ccache and distutils; neither concerns a user of this job.
warnings.filterwarnings("ignore", category=UserWarning, module=r"(paddle|_distutils_hack).*")

from job.cli import main  # noqa: E402

main(prog_name="python -m job")
