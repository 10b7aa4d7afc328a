"""`python -m job`: thread and memory settings first (they must precede `import paddle`), then the CLI."""

import sys
import warnings

from job.runtime.cpu import WithoutThreadWarning, keep_freed_memory, set_cpu_thread_defaults

if set_cpu_thread_defaults():
    sys.stderr = WithoutThreadWarning(sys.stderr)
keep_freed_memory()
# Paddle's import warns about ccache and distutils; neither concerns a user of this job.
warnings.filterwarnings("ignore", category=UserWarning, module=r"(paddle|_distutils_hack).*")

from job.cli import main  # noqa: E402

main(prog_name="python -m job")
