"""AgentPipeline execution: a DAG of agent tasks over Redis Streams, pushed, restart-safe.

One :class:`PipelineRunner` runs per active pipeline (a kopf daemon).  It

1. submits every step whose dependencies succeeded, at once, each to **its own agent's** task
   stream, with the deterministic task id ``<pipeline uid>:<step>:<attempt>`` and
   ``reply_to = pipeline_results_stream(ns, pipeline)``;
2. reads results by **push**: ``XREADGROUP BLOCK`` on the pipeline's result stream in consumer
   group ``controller``; a result is turned into step status and the next steps are submitted
   in the same wake-up, before status is even written (the handoff is a few milliseconds);
3. acknowledges a result only after the status that reflects it is stored.

Exactly-once submission across controller crashes: submission is one Lua script that does
``SADD <pipeline>:submitted <task id>`` and, only if that added the id, ``XADD`` the task and
remember its stream entry id - atomically.  After a restart the runner rebuilds its state from
``status`` (and whole outputs from Redis); a step that was submitted but whose status write was
lost is submitted again under the *same* task id, which the script refuses.  Results not yet
acknowledged are re-read from the group's pending list and applied (duplicates are ignored by
task id).

Odd states are answered on the step: a missing agent or one without a ready replica makes the
step ``Waiting`` with a message until its timeout; a template that renders empty fails the step
and says which input; a timed-out attempt is withdrawn (``XDEL`` if no worker took it yet) and
retried while ``retries`` allow.  Deleting a pipeline withdraws its queued tasks the same way
(:func:`withdraw_all`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from contracts import templates
from contracts.keys import (
    pipeline_entries_key,
    pipeline_output_key,
    pipeline_results_stream,
    pipeline_step_output_key,
    pipeline_submitted_key,
    task_stream,
)
from contracts.resources import AgentPipelineSpec, AgentPipelineStatus, Condition, PipelineStep
from contracts.streams import CONSUMER_GROUP, Result, Task
from controller import dag, render
from controller.context import Context

logger = logging.getLogger("controller.pipelines")

PLURAL = "agentpipelines"
RESULT_GROUP = "controller"
#: Longest XREADGROUP block; shorter when a step waits for an agent or a deadline is near.
MAX_BLOCK_SECONDS = 5.0
WAITING_RECHECK_SECONDS = 0.5

# KEYS: submitted set, task stream, entries hash.  ARGV: task id, then field/value pairs of the task.
SUBMIT_LUA = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
  return false
end
local args = {'XADD', KEYS[2], '*'}
for i = 2, #ARGV do args[#args + 1] = ARGV[i] end
local id = redis.call(unpack(args))
redis.call('HSET', KEYS[3], ARGV[1], KEYS[2] .. '|' .. id)
return id
"""

# KEYS: task stream.  ARGV: entry id, consumer group.  Deletes the entry only if the group has
# not handed it to a worker yet (its id is above the group's last-delivered-id); 1 if deleted.
WITHDRAW_LUA = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local last = '0-0'
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, g in ipairs(groups) do
    local name, delivered
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] end
      if g[i] == 'last-delivered-id' then delivered = g[i + 1] end
    end
    if name == ARGV[2] and delivered then last = delivered end
  end
end
local ems, eseq = parse(ARGV[1])
local lms, lseq = parse(last)
if ems > lms or (ems == lms and eseq > lseq) then
  return redis.call('XDEL', KEYS[1], ARGV[1])
end
return 0
"""


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def withdraw(redis: Redis, namespace: str, pipeline: str, task_id: str) -> bool:
    """Remove a submitted task from its agent's stream if no worker has taken it yet."""
    ref = await redis.hget(pipeline_entries_key(namespace, pipeline), task_id)
    if ref is None:
        return False
    stream, entry_id = _s(ref).rsplit("|", 1)
    deleted = await redis.eval(WITHDRAW_LUA, 1, stream, entry_id, CONSUMER_GROUP)
    return bool(deleted)


async def withdraw_all(redis: Redis, namespace: str, pipeline: str, steps: list[str]) -> int:
    """On deletion: withdraw every queued task of the pipeline and drop its Redis state."""
    entries = await redis.hgetall(pipeline_entries_key(namespace, pipeline))
    withdrawn = 0
    for task_id in entries:
        if await withdraw(redis, namespace, pipeline, _s(task_id)):
            withdrawn += 1
    keys = [
        pipeline_submitted_key(namespace, pipeline),
        pipeline_entries_key(namespace, pipeline),
        pipeline_results_stream(namespace, pipeline),
        pipeline_output_key(namespace, pipeline),
        *(pipeline_step_output_key(namespace, pipeline, s) for s in steps),
    ]
    await redis.delete(*keys)
    return withdrawn


class PipelineRunner:
    """Drives one pipeline to Succeeded or Failed; see the module docstring."""

    def __init__(self, ctx: Context, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        self.ctx = ctx
        self.redis: Redis = ctx.redis
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.generation: int | None = meta.get("generation")
        self.spec = AgentPipelineSpec.model_validate(body.get("spec") or {})
        try:
            self.status = AgentPipelineStatus.model_validate(body.get("status") or {})
        except ValidationError:
            self.status = AgentPipelineStatus()
        self.steps = dag.initial_steps(self.spec, self.status.steps)
        self.by_name: dict[str, PipelineStep] = {s.name: s for s in self.spec.steps}
        self.outputs: dict[str, str] = {}
        self.attempt_started: dict[str, float] = {}
        #: Submissions decided but not yet sent: (keys, args) of the submit script.
        self._outbox: list[tuple[list[str], list[str]]] = []
        self.results_stream = pipeline_results_stream(self.namespace, self.name)
        self._last_patch: dict[str, Any] | None = None
        self._status_dirty = asyncio.Event()
        self._write_lock = asyncio.Lock()
        #: Result entries applied to in-memory state, acknowledged once status holding them is stored.
        self._to_ack: list[str] = []
        self._submit = self.redis.register_script(SUBMIT_LUA)

    @property
    def finished(self) -> bool:
        return self.status.phase in ("Succeeded", "Failed")

    # --- main loop --------------------------------------------------------------------------

    async def run(self, stopped: Any) -> None:
        if self.finished:
            return
        problem = dag.validate_graph(self.spec)
        if problem is not None:
            self.status.phase = "Failed"
            self._condition(False, "InvalidGraph", problem)
            self.status.completion_time = render.now_precise()
            await self._patch()
            return
        await self._ensure_group()
        await self._load_outputs()
        if self.status.start_time is None:
            self.status.start_time = render.now_precise()
        # Status is written by a separate task, so a slow API server never delays the next handoff.
        writer = asyncio.create_task(
            self._status_writer(), name=f"status-writer {self.namespace}/{self.name}"
        )
        try:
            await self._advance()
            await self._loop(stopped)
            await self._write_status()  # the final state is stored before the runner returns
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _loop(self, stopped: Any) -> None:
        read_from = "0"  # first our own pending entries (unacknowledged before a restart)
        while not stopped and not self.finished:
            try:
                reply: Any = await self.redis.xreadgroup(
                    RESULT_GROUP,
                    self.ctx.config.consumer_name,
                    {self.results_stream: read_from},
                    count=100,
                    block=None if read_from == "0" else int(self._block_seconds() * 1000),
                )
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # stream deleted under us (pipeline being deleted)
                    await self._ensure_group()
                    continue
                raise
            entries = reply[0][1] if reply else []
            if read_from == "0" and not entries:
                read_from = ">"
            for entry_id, fields in entries:
                await self._apply_result(fields)
                # Acknowledged by the status writer once status reflecting it is stored, never before:
                # a crash in between re-reads the result after the restart.
                self._to_ack.append(_s(entry_id))
            await self._advance()

    def _block_seconds(self) -> float:
        block = MAX_BLOCK_SECONDS
        now = time.monotonic()
        for name, state in self.steps.items():
            if state.phase == "Waiting":
                block = min(block, WAITING_RECHECK_SECONDS)
            if state.phase in ("Running", "Waiting"):
                deadline = self.attempt_started.get(name, now) + self._timeout(name)
                block = min(block, max(0.05, deadline - now))
        return block

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.results_stream, RESULT_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _load_outputs(self) -> None:
        for name, state in self.steps.items():
            if state.phase != "Succeeded":
                continue
            whole = await self.redis.get(pipeline_step_output_key(self.namespace, self.name, name))
            self.outputs[name] = _s(whole) if whole is not None else (state.output or "")

    def _timeout(self, step: str) -> float:
        return float(self.by_name[step].timeout_seconds or dag.DEFAULT_STEP_TIMEOUT)

    # --- decisions --------------------------------------------------------------------------

    async def _advance(self) -> None:
        """Timeouts, skips, submissions, phase and output; then one status patch."""
        now = time.monotonic()
        for name, state in self.steps.items():
            if state.phase not in ("Running", "Waiting"):
                continue
            started = self.attempt_started.setdefault(name, now)  # after a restart: a fresh window
            timeout = self._timeout(name)
            if now - started < timeout:
                continue
            if state.phase == "Running" and state.task_id:
                await withdraw(self.redis, self.namespace, self.name, state.task_id)
            step = self.by_name[name]
            if state.phase == "Running" and state.attempts <= step.retries:
                state.message = f"attempt {state.attempts} timed out after {timeout:g}s; retrying"
                self._start(step, retry=True)
                continue
            waited = state.message or ""
            state.phase = "Failed"
            state.completion_time = render.now_precise()
            state.message = (
                f"timed out after {timeout:g}s ({waited})"
                if waited.startswith("waiting")
                else f"timed out after {timeout:g}s (attempt {state.attempts} of {step.retries + 1})"
            )
        dag.skip_blocked(self.spec, self.steps)
        if not (self.spec.fail_fast and any(s.phase == "Failed" for s in self.steps.values())):
            for step in dag.runnable(self.spec, self.steps):
                self._start(step)
        # Every step that became runnable goes out in one round trip: they start together.
        await self._flush()
        dag.skip_blocked(self.spec, self.steps)
        phase = dag.pipeline_phase(self.spec, self.steps)
        if phase == "Failed":
            await self._cancel_running()
            failed = next((s for s in self.steps.values() if s.phase == "Failed"), None)
            message = f"step {failed.name!r} failed: {failed.message}" if failed else "pipeline failed"
            self._condition(False, "StepFailed", message)
            self.status.completion_time = render.now_precise()
        elif phase == "Succeeded":
            self._finish_output()
            await self.redis.set(pipeline_output_key(self.namespace, self.name), self._whole_output)
            self._condition(True, "AllStepsSucceeded", f"{len(self.steps)} steps succeeded")
            self.status.completion_time = render.now_precise()
        self.status.phase = phase
        self._status_dirty.set()

    def _start(self, step: PipelineStep, retry: bool = False) -> None:
        """Decide a step's next attempt and queue its submission (sent by :meth:`_flush`)."""
        state = self.steps[step.name]
        try:
            prompt = dag.compose_prompt(step, self.spec.input, self.outputs)
        except (templates.TemplateError, dag.EmptyPromptError) as exc:
            state.phase = "Failed"
            state.message = str(exc)
            state.completion_time = render.now_precise()
            return
        info = self.ctx.agents.get((self.namespace, step.agent_deployment))
        waiting = None
        if info is None:
            waiting = f"waiting: agent {step.agent_deployment!r} does not exist in namespace {self.namespace}"
        elif info.ready_replicas < 1:
            waiting = f"waiting: agent {step.agent_deployment!r} has no ready replica"
        if waiting is not None and not retry:
            if state.phase != "Waiting":
                state.phase = "Waiting"
                state.start_time = state.start_time or render.now_precise()
                self.attempt_started[step.name] = time.monotonic()
            state.message = waiting
            return
        attempt = state.attempts + 1
        task = Task(
            task_id=dag.task_id(self.uid, step.name, attempt),
            prompt=prompt,
            reply_to=self.results_stream,
            pipeline=self.name,
            step=step.name,
            submitted_at=time.time(),
        )
        fields = task.to_fields()
        args: list[str] = [task.task_id]
        for key, value in fields.items():
            args.extend((key, value))
        keys = [
            pipeline_submitted_key(self.namespace, self.name),
            task_stream(self.namespace, step.agent_deployment),
            pipeline_entries_key(self.namespace, self.name),
        ]
        self._outbox.append((keys, args))
        state.phase = "Running"
        state.task_id = task.task_id
        state.attempts = attempt
        state.start_time = state.start_time or render.now_precise()
        if not retry:
            state.message = None
        self.attempt_started[step.name] = time.monotonic()

    async def _flush(self) -> None:
        """Send queued submissions in one pipelined round trip; each is still its own atomic script."""
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, []
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, args in outbox:
                await self._submit(keys=keys, args=args, client=pipe)
            await pipe.execute()

    async def _apply_result(self, fields: dict[Any, Any]) -> None:
        try:
            result = Result.from_fields(fields)
        except ValidationError:
            logger.warning("pipeline %s/%s: ignoring a malformed result entry", self.namespace, self.name)
            return
        name = result.step or result.task_id.split(":")[-2]
        state = self.steps.get(name)
        if state is None or state.phase != "Running" or state.task_id != result.task_id:
            return  # a duplicate, or the late result of an attempt already given up
        step = self.by_name[name]
        if result.status == "succeeded":
            await self.redis.set(pipeline_step_output_key(self.namespace, self.name, name), result.output)
            self.outputs[name] = result.output
            state.output, truncated = dag.truncate(result.output)
            state.output_truncated = truncated or None
            state.phase = "Succeeded"
            state.message = None if result.output.strip() else "the agent returned an empty output"
            state.completion_time = render.now_precise()
            return
        problem = f"{result.status}: {result.error or 'no error message'}"
        if state.attempts <= step.retries:
            state.message = f"attempt {state.attempts} {problem}; retrying"
            self._start(step, retry=True)
            return
        state.phase = "Failed"
        state.message = f"{problem} (attempt {state.attempts} of {step.retries + 1})"
        state.completion_time = render.now_precise()

    async def _cancel_running(self) -> None:
        for state in self.steps.values():
            if state.phase in ("Running", "Waiting"):
                if state.phase == "Running" and state.task_id:
                    await withdraw(self.redis, self.namespace, self.name, state.task_id)
                state.phase = "Skipped"
                state.message = "cancelled: the pipeline failed (failFast)"
                state.completion_time = render.now_precise()

    _whole_output: str = ""

    def _finish_output(self) -> None:
        if self.spec.output:
            try:
                whole = templates.render(self.spec.output, self.spec.input, self.outputs)
            except templates.TemplateError as exc:
                whole = ""
                self.status.conditions = [
                    Condition(type="OutputRendered", status="False", reason="TemplateError", message=str(exc))
                ]
        else:
            whole = self.outputs.get(self.spec.steps[-1].name, "")
        self._whole_output = whole
        self.status.output, _ = dag.truncate(whole)

    def _condition(self, ok: bool, reason: str, message: str) -> None:
        kept = [c for c in self.status.conditions if c.type != "Succeeded"]
        kept.append(
            Condition(
                type="Succeeded",
                status="True" if ok else "False",
                reason=reason,
                message=message,
                last_transition_time=render.now_precise(),
                observed_generation=self.generation,
            )
        )
        self.status.conditions = kept

    async def _status_writer(self) -> None:
        """Write status whenever it changed, coalescing changes made while a write was in flight."""
        while True:
            await self._status_dirty.wait()
            self._status_dirty.clear()
            await self._write_status()

    async def _write_status(self) -> None:
        async with self._write_lock:
            acks, self._to_ack = self._to_ack, []
            await self._patch()
            if acks:
                await self.redis.xack(self.results_stream, RESULT_GROUP, *acks)

    async def _patch(self) -> None:
        self.status.steps = [self.steps[s.name] for s in self.spec.steps]
        self.status.progress = dag.progress(self.steps)
        self.status.observed_generation = self.generation
        body = self.status.to_k8s()
        if body == self._last_patch:
            return
        await asyncio.to_thread(self.ctx.kube.patch_status, PLURAL, self.namespace, self.name, body)
        self._last_patch = body


async def run_pipeline(ctx: Context, body: dict[str, Any], stopped: Any) -> None:
    """The kopf daemon body: run until finished or stopped; Redis outages are retried, not fatal."""
    delay = 0.5
    while not stopped:
        try:
            runner = PipelineRunner(ctx, body)
        except ValidationError as exc:
            # The CRD schema and webhook normally prevent this; a stored bad spec fails, it does not loop.
            first = exc.errors()[0]
            where = "spec." + ".".join(str(p) for p in first["loc"])
            failed = AgentPipelineStatus(
                phase="Failed",
                completion_time=render.now_precise(),
                conditions=[
                    Condition(
                        type="Succeeded",
                        status="False",
                        reason="InvalidSpec",
                        message=f"{where}: {first['msg']}",
                    )
                ],
            )
            meta = body["metadata"]
            await asyncio.to_thread(
                ctx.kube.patch_status, PLURAL, meta["namespace"], meta["name"], failed.to_k8s()
            )
            return
        try:
            await runner.run(stopped)
            return
        except RedisError as exc:
            logger.warning(
                "pipeline %s/%s: redis error %s; retrying in %.1fs", runner.namespace, runner.name, exc, delay
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)
        fresh = await asyncio.to_thread(ctx.kube.get_custom, PLURAL, runner.namespace, runner.name)
        if fresh is None:
            return
        body = fresh
