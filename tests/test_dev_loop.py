"""The development loop of `ojs-run`: `--check MODULE`, and clear one-line errors for the common
mistakes at start (a module that does not import, Redis unreachable). Real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.procs import REPO, Start, free_port

LAUNCH = "import sys; from runtime.cli import run_main; sys.exit(run_main())"


def ojs_run(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", LAUNCH, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout_s)


# --- ojs-run --check ---------------------------------------------------------------------------------


def test_check_lists_the_handlers_with_queues_options_and_signatures() -> None:
    done = ojs_run("--check", "tests.fixtures.task_handlers")
    out = done.stdout
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 handler(s)" in out
    email = next(line for line in out.splitlines() if "handle.email" in line)
    assert "queue=mail" in email and "async" in email
    assert "send_email(to: str, subject: str = 'hello') -> dict[str, str]" in email
    add = next(line for line in out.splitlines() if "handle.add" in line)
    assert "sync" in add and "add(a: int, b: int) -> int" in add
    assert "queues: mail:1, default:1" in out


def test_check_options_of_the_example_handlers() -> None:
    done = ojs_run("--check", "handlers_example")
    assert done.returncode == 0, done.stdout + done.stderr
    webhook = next(line for line in done.stdout.splitlines() if "webhook.deliver" in line)
    assert "queue=webhooks" in webhook and "timeout_s=10" in webhook and "retry=" in webhook


def test_check_refuses_a_duplicate_job_type() -> None:
    done = ojs_run("--check", "tests.fixtures.check_duplicate")
    assert done.returncode == 1
    assert "'dup.job' is registered already" in done.stderr
    assert "check_duplicate.py:12" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_refuses_a_handler_without_ctx() -> None:
    done = ojs_run("--check", "tests.fixtures.check_no_ctx")
    assert done.returncode == 1
    assert "noctx.job" in done.stderr and "ctx" in done.stderr
    assert "fine.job" not in done.stderr  # only the problem is reported as one
    assert "fine.job" in done.stdout  # the listing is still printed


def test_check_refuses_an_unknown_queue_in_queues() -> None:
    done = ojs_run("--check", "tests.fixtures.task_handlers", "--queues", "mail:2,default,nosuch")
    assert done.returncode == 1
    (problem,) = done.stderr.strip().splitlines()  # mail and default are fine
    assert "'nosuch'" in problem
    partial = ojs_run("--check", "tests.fixtures.task_handlers", "--queues", "default")
    assert partial.returncode == 0  # serving fewer queues is a choice, and only noted
    assert "note: handle.email enqueues to 'mail', which --queues leaves out" in partial.stdout


def test_check_reports_a_module_that_does_not_import_in_one_line() -> None:
    done = ojs_run("--check", "tests.fixtures.misspelt_handlers")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) <= 2, done.stderr
    assert "NameError: name 'DEFAULT_RETRIES' is not defined" in done.stderr
    assert "misspelt_handlers.py:5" in done.stderr
    missing = ojs_run("--check", "no_such_handlers_module")
    assert missing.returncode == 1 and "No module named 'no_such_handlers_module'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_an_import_error_raised_in_a_library_is_located_in_the_applications_code() -> None:
    done = ojs_run("--check", "tests.fixtures.bad_config_handlers")
    assert done.returncode == 1
    assert "JSONDecodeError" in done.stderr and "bad_config_handlers.py:7" in done.stderr, done.stderr


# --- clear errors at start ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_module_that_does_not_import_stops_the_runtime_with_one_clear_line(start: Start) -> None:
    runtime = start("--processes", "2", "--no-http", module="tests.fixtures.misspelt_handlers")
    assert runtime.wait_exit() == 3
    log = runtime.log()
    assert "Traceback" not in log, log
    assert "misspelt_handlers.py:5" in log and "NameError: name 'DEFAULT_RETRIES' is not defined" in log


@pytest.mark.slow
def test_redis_unreachable_at_start_names_the_url_without_its_password(tmp_path: Path) -> None:
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    done = ojs_run("handlers_example", "--redis", url, "--processes", "1", "--no-http")
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert "cannot reach Redis at redis://:***@127.0.0.1:" in output, output
    assert "s3cret-pw" not in output
    assert "Traceback" not in output
    assert "started pool process" not in output  # nothing was forked to fail on its own
