"""The kopf glue's own decisions: how a new status becomes a merge patch, and how retries are logged."""

from __future__ import annotations

import logging

from hyperv_operator.cli import _RetryIsNotAnError, build_parser
from hyperv_operator.handlers import merge_patch


def test_merge_patch_sets_changed_and_deletes_removed_keys() -> None:
    old = {"phase": "Copying", "copy": {"percent": 40, "queued": True}, "lastError": "busy"}
    new = {"phase": "Copying", "copy": {"percent": 55}}
    assert merge_patch(old, new) == {"copy": {"percent": 55, "queued": None}, "lastError": None}


def test_merge_patch_of_equal_statuses_is_empty() -> None:
    status = {"phase": "Provisioned", "conditions": [{"type": "Ready", "status": "True"}]}
    assert merge_patch(status, dict(status)) == {}


def test_merge_patch_replaces_lists_whole() -> None:
    old = {"createdFiles": ["a"]}
    assert merge_patch(old, {"createdFiles": ["a", "b"]}) == {"createdFiles": ["a", "b"]}


def test_handler_retries_are_logged_as_progress_not_errors() -> None:
    progress = logging.LogRecord("kopf.objects", logging.ERROR, __file__, 1,
                                 "Handler 'reconcile' failed temporarily: copying 40%", None, None)
    failure = logging.LogRecord("kopf.objects", logging.ERROR, __file__, 1, "Handler 'reconcile' failed with an "
                                "exception. Will retry.", None, None)
    assert _RetryIsNotAnError().filter(progress) and progress.levelno == logging.INFO
    assert _RetryIsNotAnError().filter(failure) and failure.levelno == logging.ERROR


def test_cli_run_defaults_are_production_ones() -> None:
    args = build_parser().parse_args(["run"])
    assert (args.metrics_port, args.liveness_port, args.drift_interval) == (8080, 8081, 30.0)
    assert args.winrm_operation_timeout < args.winrm_read_timeout
