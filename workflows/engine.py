"""Running executions: create, dispatch, claim, run node by node, pause, finish, cancel, retry.

The database row is the truth, and an execution is worker_mode's claimed work:
a worker claims it with a conditional UPDATE (queued -> running, with a fresh
claim token), so a duplicated message never runs it twice. Each node's effects
and its job's "resolved" row commit together, in a transaction that also checks
the claim (``Claim.fence``/``finish``): an execution resumed after its owner was
lost re-runs at most the node that was interrupted, whose database effects were
rolled back with it, and an owner that was frozen past its lease and taken over
commits nothing more.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import logging
import time
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from worker_mode import claims, enqueue, storable
from worker_mode.claims import Claim, ClaimLost
from worker_mode.conf import conf as worker_conf

from . import graph, sql
from . import nodes as node_types
from .apps import SERVICE_KEY
from .exceptions import NodeFailed, WorkflowFailed
from .graph import Graph
from .models import Execution, Job, Node, Workflow

logger = logging.getLogger(__name__)
Status = Execution.Status

#: Workflow ids of the executions running in this context, outermost first (for stack limits).
_stack: contextvars.ContextVar[tuple[int, ...]] = contextvars.ContextVar("workflow_stack", default=())


class _Paused(Exception):
    def __init__(self, until: datetime.datetime) -> None:
        self.until = until


class _TimedOut(Exception):
    pass


def system_scope(execution: Execution | None = None) -> dict[str, Any]:
    scope: dict[str, Any] = {"now": timezone.now().isoformat(), "node": worker_conf.WORKER_MODE_NODE_NAME}
    if execution is not None:
        scope.update(execution=execution.pk, workflow=execution.workflow.key)
    return scope


def within_stack_limit(workflow: Workflow) -> bool:
    """False when ``workflow`` already runs ``stack_limit`` times in the chain that triggers it."""
    if _stack.get().count(workflow.pk) >= workflow.stack_limit:
        logger.warning(
            "Workflow %s not triggered: it already runs %d time(s) in this chain (stack limit %d)",
            workflow.key,
            _stack.get().count(workflow.pk),
            workflow.stack_limit,
        )
        return False
    return True


def start(
    workflow: Workflow,
    *,
    event: str,
    context: dict[str, Any],
    user: Any = None,
    scheduled_for: datetime.datetime | None = None,
) -> Execution | None:
    """Trigger ``workflow``. Async: a queued execution, enqueued when the transaction commits.

    Sync: runs now, in the caller's transaction, and raises WorkflowFailed
    unless it resolves (so the caller's atomic block rolls back). Returns
    None when the stack limit stops it. Raises NotStorable for a context the
    database cannot store.
    """
    if not within_stack_limit(workflow):
        return None
    storable.check(context)
    execution = Execution(
        workflow=workflow,
        event=event,
        context=context,
        stack=list(_stack.get()),
        triggered_by=user if getattr(user, "is_authenticated", False) else None,
        scheduled_for=scheduled_for,
    )
    if not workflow.sync:
        execution.save()
        dispatch(execution)
        return execution
    with transaction.atomic():
        # Claimed like a worker's run; nobody else sees the row before it is finished.
        claim = claims.claim_new(execution)
        with claim:
            Runner(execution, claim, first_run=True).run()
        execution.refresh_from_db()
        if execution.status != Status.RESOLVED:
            raise WorkflowFailed(execution)
    return execution


def dispatch(execution: Execution) -> str:
    """Enqueue ``execution`` on workflow:process when the transaction commits (never raises for Redis)."""
    timeout = execution.workflow.timeout
    return enqueue(
        SERVICE_KEY,
        "workflows.jobs.process_execution",
        execution.pk,
        job_id=execution.job_id,
        job_timeout=(timeout or 3600) + 60,
        result_ttl=60,
        failure_ttl=7 * 86400,
        description=f"workflow {execution.workflow.key} execution {execution.pk}",
    )


_workflows: dict[int, tuple[float, Workflow]] = {}
#: How long a worker process reuses a workflow row it read. What the engine
#: reads from it (key, sync, stack limit, timeout) cannot change once the
#: version has executions, so this only bounds how long a renamed title is stale.
_WORKFLOW_TTL = 1.0


def _workflow(pk: int) -> Workflow:
    now = time.monotonic()
    cached = _workflows.get(pk)
    if cached is not None and now - cached[0] < _WORKFLOW_TTL:
        return cached[1]
    if len(_workflows) > 256:
        _workflows.clear()
    workflow = Workflow.objects.get(pk=pk)
    _workflows[pk] = (now, workflow)
    return workflow


def forget_workflows() -> None:
    _workflows.clear()
    _graphs.clear()


def claim(execution_id: int, owner: claims.Owner | None = None) -> Claim | None:
    """queued -> running for this process (or ``owner``), if nobody else has it; the Claim, else None.

    The claimed execution (``claim.instance``) has its workflow, and ``first_claim``
    tells whether this was its first claim (then no job of it can exist yet).
    """
    claimed = claims.claim(Execution, execution_id, owner=owner)
    if claimed is not None:
        claimed.instance.workflow = _workflow(claimed.instance.workflow_id)
    return claimed


def run(execution_id: int) -> str:
    """Claim and run an execution; returns its status after this run, or "not claimed"."""
    claimed = claim(execution_id)
    if claimed is None:
        logger.info("Execution %s not claimed: it is not queued (already taken or finished)", execution_id)
        return "not claimed"
    execution = claimed.instance
    with claimed:  # renews the lease meanwhile; an error that escapes still ends the execution
        return Runner(execution, claimed, first_run=execution.first_claim).run()
    return _status_of(execution_id)


def _status_of(execution_id: int) -> str:
    return Execution.objects.filter(pk=execution_id).values_list("status", flat=True).first() or ""


#: How often a running execution re-reads its row to notice a cancel or a takeover.
_CLAIM_CHECK_INTERVAL = datetime.timedelta(seconds=0.5)
_graphs: dict[tuple[int, datetime.datetime], Graph] = {}


def _graph_of(workflow: Workflow) -> Graph:
    # A version that runs has executions, so its nodes are locked: one query per process, not per run.
    key = (workflow.pk, workflow.created_at)
    graph = _graphs.get(key)
    if graph is None:
        if len(_graphs) > 256:
            _graphs.clear()
        graph = _graphs[key] = Graph(Node.objects.filter(workflow=workflow))
    return graph


class Runner:
    """Walks one execution's nodes in this process.

    Database work per execution is kept to a few round trips, since that is
    what an execution costs: the job rows of pure nodes (condition,
    calculation, end) are written with the next transaction instead of one
    commit each (after a crash such a node is simply computed again), and
    the row is re-read for a cancel at most every half second.
    """

    def __init__(self, execution: Execution, claim: Claim, *, first_run: bool = False) -> None:
        self.execution = execution
        self.claim = claim
        self.workflow = execution.workflow
        self.graph = _graph_of(self.workflow)
        self.jobs: dict[str, Job] = (
            {} if first_run else {job.node_key: job for job in Job.objects.filter(execution=execution)}
        )
        self.buffer: list[Job] = []
        #: Jobs that exist and changed (a re-run): saved by ``_flush`` with the next fenced write.
        self.dirty: list[Job] = []
        #: Set when the last node's transaction has already marked the execution resolved.
        self.finished = False
        self.scope: dict[str, Any] = {
            "$context": execution.context,
            "$jobs": {k: j.result for k, j in self.jobs.items() if j.status == Job.Status.RESOLVED},
            "$system": system_scope(execution),
        }
        now = timezone.now()
        self.checked_at = now
        started = execution.started_at or now
        self.deadline = (
            started + datetime.timedelta(seconds=self.workflow.timeout) if self.workflow.timeout else None
        )

    def run(self) -> str:
        token = _stack.set((*self.execution.stack, self.workflow.pk))
        status, error = Status.RESOLVED, ""
        try:
            if self.graph.head is not None:
                end = self.walk(self.graph.head)
                if end is not None and end.end == "failed":
                    status, error = Status.FAILED, end.end_message or "Ended by an end node."
        except _Paused as paused:
            try:
                with transaction.atomic():
                    self._flush()
                    # A pause is not a failed attempt: WORKFLOWS_MAX_ATTEMPTS counts runs cut short.
                    if not self.claim.release(run_after=paused.until, refund_attempt=True):
                        raise self.claim._lose()
            except ClaimLost:
                return self._stopped()
            logger.info("Execution %s paused until %s", self.execution.pk, paused.until.isoformat())
            return Status.QUEUED
        except ClaimLost:
            return self._stopped()
        except _TimedOut:
            status, error = Status.ABORTED, f"Timed out after {self.workflow.timeout} s."
        except NodeFailed as exc:
            status, error = Status.FAILED, str(exc)
        except Exception as exc:
            logger.exception("Execution %s: error", self.execution.pk)
            status, error = Status.ERROR, f"{type(exc).__name__}: {exc}"
        finally:
            _stack.reset(token)
        if not self.finished:  # else the last node's own transaction did it
            together = self.buffer or self.dirty or status != Status.RESOLVED
            try:
                with transaction.atomic() if together else contextlib.nullcontext():
                    self._flush()
                    if not self._finish(status, error):
                        raise self.claim._lose()  # rolls the job rows back with it
                    if status != Status.RESOLVED:
                        Job.objects.filter(execution=self.execution, status=Job.Status.PENDING).update(
                            status=Job.Status.ABORTED, finished_at=timezone.now()
                        )
            except ClaimLost:
                return self._stopped()
        # A resolved execution is the common case and rq already logs "Job OK" for it.
        logger.log(
            logging.DEBUG if status == Status.RESOLVED else logging.INFO,
            "Execution %s of %s: %s%s",
            self.execution.pk,
            self.workflow.key,
            status,
            f" ({error})" if error else "",
        )
        return status

    def _finish(self, status: str, error: str) -> bool:
        return self.claim.finish(status, error=error)

    def _stopped(self) -> str:
        """The claim is gone (a cancel, or a takeover after the lease lapsed): nothing more is written."""
        self.buffer, self.dirty = [], []
        logger.warning(
            "Execution %s stopped: canceled or taken over while %s ran it",
            self.execution.pk,
            self.execution.worker,
        )
        return _status_of(self.execution.pk)

    def walk(self, node, last: bool = True) -> node_types.Outcome | None:
        """Run ``node`` and what follows it; returns the outcome of an end node if one is reached.

        ``last``: nothing runs after this line of nodes, so its last node is
        the last of the execution.
        """
        while node is not None:
            following = self.graph.next(node)
            outcome = self.run_node(node, last=last and following is None)
            if outcome.end:
                return outcome
            if outcome.branch:
                head = self.graph.branch_head(node, outcome.branch)
                if head is not None:
                    end = self.walk(head, last=last and following is None)
                    if end is not None:
                        return end
            node = following
        return None

    def check_claim(self) -> None:
        """Stop on a timeout, a cancel or a takeover; renew the lease when due."""
        now = timezone.now()
        if self.deadline is not None and now > self.deadline:
            raise _TimedOut
        self.claim.check()
        if now - self.checked_at >= _CLAIM_CHECK_INTERVAL:
            if not self.claim.still_mine():
                raise self.claim._lose()
            self.checked_at = now

    def run_node(self, node: Node, *, last: bool = False) -> node_types.Outcome:
        job = self.jobs.get(node.key)
        if job is not None and job.status == Job.Status.RESOLVED:
            return self._replayed(node, job)
        self.check_claim()
        started_at = timezone.now()
        if job is not None and node.type == "delay" and job.status == Job.Status.PENDING and job.result:
            return self._resume_delay(node, job, started_at)
        node_type = node_types.TYPES[node.type]
        if node_type.external and self.workflow.sync:  # saved before graph.check refused it
            raise self._failed(node, NodeFailed(graph.SYNC_HTTP.format(key=node.key)), started_at)
        if node_type.external:
            # Recorded before acting: a rollback cannot undo a call, and a re-run must show.
            self._record(node, Job.Status.PENDING, None, "", started_at)
            with transaction.atomic():
                self._flush()
                self.claim.fence()
        if node_type.pure:
            try:
                outcome = node_types.run(node.type, node.config, self.scope)
                storable.check(outcome.result)
            except Exception as exc:
                raise self._failed(node, exc, started_at) from exc
            self._record(node, Job.Status.RESOLVED, outcome.result, "", started_at)
        else:
            # The node's effects and its job row (with the buffered ones) commit together, so a
            # worker that dies mid-node leaves nothing half-written to re-run over. The same
            # transaction checks the claim (the last node finishes the execution in it): if the
            # execution was canceled or taken over meanwhile, the node's effects are rolled back.
            buffered, known, dirty = list(self.buffer), dict(self.jobs), list(self.dirty)
            try:
                if node_type.external:
                    # Called outside any transaction: a call cannot be rolled back, and no lock
                    # (the execution's row, SQLite's write lock) may be held while a peer answers.
                    outcome = node_types.run(node.type, node.config, self.scope)
                    storable.check(outcome.result)
                with transaction.atomic():
                    if not node_type.external:
                        outcome = node_types.run(node.type, node.config, self.scope)
                        storable.check(outcome.result)
                    status = Job.Status.PENDING if outcome.pause_until else Job.Status.RESOLVED
                    self._record(node, status, outcome.result, "", started_at)
                    self._flush()
                    if last and not outcome.pause_until and not outcome.branch and not outcome.end:
                        if not self._finish(Status.RESOLVED, ""):
                            raise self.claim._lose()
                        self.finished = True
                    else:
                        self.claim.fence()
            except Exception as exc:
                for pending in buffered:  # rolled back with the node: write them again later
                    pending.pk, pending._state.adding = None, True
                self.buffer, self.jobs, self.dirty = buffered, known, dirty
                if node.key in known:
                    known[node.key].refresh_from_db()
                if isinstance(exc, ClaimLost):
                    raise
                raise self._failed(node, exc, started_at) from exc
        if outcome.pause_until is not None:
            raise _Paused(outcome.pause_until)
        self.scope["$jobs"][node.key] = outcome.result
        return outcome

    def _failed(self, node: Node, exc: Exception, started_at: datetime.datetime) -> Exception:
        """Record the node's failure; returns the exception that ends the execution."""
        if isinstance(exc, NodeFailed):
            result = exc.result
            try:
                storable.check(result)
            except storable.NotStorable:
                result = None
            self._record(node, Job.Status.FAILED, result, str(exc), started_at)
            failure: Exception = exc
        elif isinstance(exc, storable.NotStorable):
            message = f"The node's result cannot be stored: {exc}"
            self._record(node, Job.Status.FAILED, None, message, started_at)
            failure = NodeFailed(f"Node {node.key}: {message}")
        elif isinstance(exc, ValidationError):
            message = "; ".join(exc.messages)
            self._record(node, Job.Status.FAILED, None, message, started_at)
            failure = NodeFailed(f"Node {node.key}: {message}")
        else:
            self._record(node, Job.Status.ERROR, None, f"{type(exc).__name__}: {exc}", started_at)
            failure = exc
        return failure  # its job row is written with the execution's end

    def _record(
        self, node: Node, status: str, result: Any, error: str, started_at: datetime.datetime
    ) -> None:
        """Record the node's job, written by the next ``_flush`` (always with a fenced write)."""
        finished_at = None if status == Job.Status.PENDING else timezone.now()
        error = storable.text(error)
        job = self.jobs.get(node.key)
        if job is None:
            self.buffer.append(
                Job(
                    execution=self.execution, node=node, node_key=node.key, status=status, result=result,
                    error=error, started_at=started_at, finished_at=finished_at,
                )
            )  # fmt: skip
            return
        if job.status != Job.Status.PENDING or job.started_at != started_at:
            job.runs += 1  # a re-run: after a dead worker, or a retry
        job.status, job.result, job.error = status, result, error
        job.started_at, job.finished_at = started_at, finished_at
        if job not in self.dirty:
            self.dirty.append(job)

    def _flush(self) -> None:
        for job in self.dirty:
            job.save(update_fields=["runs", "status", "result", "error", "started_at", "finished_at"])
        self.dirty = []
        if self.buffer:
            sql.insert_jobs(self.buffer)
            for job in self.buffer:
                self.jobs[job.node_key] = job
            self.buffer = []

    def _replayed(self, node: Node, job: Job) -> node_types.Outcome:
        if node.type == "condition":
            return node_types.Outcome(result=job.result, branch="true" if job.result else "false")
        if node.type == "end":
            return node_types.Outcome(
                result=job.result,
                end=(job.result or {}).get("status", "resolved"),
                end_message=node.config.get("message", ""),
            )
        return node_types.Outcome(result=job.result)

    def _resume_delay(self, node: Node, job: Job, now: datetime.datetime) -> node_types.Outcome:
        until = datetime.datetime.fromisoformat(job.result["until"])
        if now < until:
            raise _Paused(until)
        self._record(node, Job.Status.RESOLVED, job.result, "", job.started_at)
        self.scope["$jobs"][node.key] = job.result
        return node_types.Outcome(result=job.result)


def cancel(execution: Execution) -> bool:
    """Cancel a queued or started execution; a running one stops before its next node."""
    now = timezone.now()
    canceled = Execution.objects.filter(pk=execution.pk, status__in=[Status.QUEUED, Status.RUNNING]).update(
        status=Status.CANCELED, finished_at=now, lease_expires_at=None, claim_token="", error="Canceled."
    )
    if canceled:
        Job.objects.filter(execution=execution, status=Job.Status.PENDING).update(
            status=Job.Status.CANCELED, finished_at=now
        )
    return bool(canceled)


def retry(execution: Execution) -> bool:
    """Queue a finished, unsuccessful execution again, from its first node that did not resolve."""
    with transaction.atomic():
        retried = Execution.objects.filter(
            pk=execution.pk, status__in=[Status.FAILED, Status.ERROR, Status.ABORTED, Status.CANCELED]
        ).update(
            status=Status.QUEUED,
            error="",
            finished_at=None,
            run_after=None,
            worker="",
            node_name="",
            pid=None,
            lease_expires_at=None,
            attempts=0,  # someone chose to try again: recovery's attempts start over (job runs keep count)
        )
        if retried:
            # Resolved jobs are replayed from their stored results; the others run again (runs + 1).
            dispatch(Execution.objects.select_related("workflow").get(pk=execution.pk))
    return bool(retried)
