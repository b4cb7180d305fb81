"""`POST /PowerShell`: Exchange's remote PowerShell endpoint (WinRM, configuration
`Microsoft.Exchange`) for the Exchange organisations of the sandbox.

One shell is one runspace pool (psrpcore `ServerRunspacePool`); one Command is one
pipeline (`ServerPipeline`). A pipeline runs as soon as its CreatePipeline message is
whole, so its output is ready for the client's first Receive. PSRP messages the pool
produces are sorted per target (the pool, or a pipeline id) as they come out of
`data_to_send`, and each Receive takes those of its target.

Auth is the EWS face's (IIS Windows authentication: Basic, NTLM/Negotiate): the same
`Authenticator`, so an account signs in here as it does to EWS.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from psrpcore import PSRPPayload, ServerPipeline, ServerRunspacePool, StreamType
from psrpcore.types import (
    ErrorCategory,
    ErrorCategoryInfo,
    ErrorRecord,
    NETException,
    PSInvocationState,
    PSNoteProperty,
    PSObject,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..connections import connection_of
from ..ews.auth import Challenge, Login
from ..ews.face import authenticator, unauthorized
from ..web import SandboxContext, ctx_of
from . import cmdlets
from . import wsman as w

PATH = "/PowerShell"
CONFIGURATION = "Microsoft.Exchange"
RESOURCE_URI = w.RESOURCE_PREFIX + CONFIGURATION
STATE_KEY = "psrp_shells"
CONTENT_TYPE = "application/soap+xml;charset=UTF-8"
# PSRP fragments are cut to this many bytes (MS-PSRP 2.2.4: a message may span fragments),
# and a ReceiveResponse carries fragments up to the client's MaxEnvelopeSize (minus room for
# the envelope, base64 grows data by 4/3); the rest waits for the next Receive, as WinRM does.
FRAGMENT_BYTES = 32 * 1024
ENVELOPE_OVERHEAD = 4096
DEFAULT_MAX_ENVELOPE = 153600  # WinRM's default MaxEnvelopeSizekb is 150 (pypsrp's default)
# A shell unused this long is deleted (the IdleTimeOut announced on Create): a client killed
# mid-run leaves no pool behind for good; its next request gets "shell not found".
IDLE_S = 900.0
# Organisations that have Exchange's remote PowerShell (Amazon WorkMail has none).
KINDS = ("exchange2016", "exchange2019")


class FacePipeline(ServerPipeline):
    """A pipeline that can fail with an error record (PipelineState Failed, MS-PSRP 2.2.3.5)."""

    def fail(self, error: ErrorRecord) -> None:
        self._change_state(PSInvocationState.Failed, error=error)


@dataclass
class Shell:
    shell_id: str
    login: Login
    pool: ServerRunspacePool
    client_ip: str
    outgoing: dict[uuid.UUID | None, list[bytes]] = field(default_factory=dict)
    pipelines: dict[str, FacePipeline] = field(default_factory=dict)
    used: float = field(default_factory=time.monotonic)


class Shells:
    """The open shells of one sandbox."""

    def __init__(self) -> None:
        self.by_id: dict[str, Shell] = {}
        self.lock = threading.Lock()


def shells(ctx: SandboxContext) -> Shells:
    found = ctx.extra.get(STATE_KEY)
    if found is None:
        found = ctx.extra[STATE_KEY] = Shells()
    assert isinstance(found, Shells)
    return found


def routes() -> list[BaseRoute]:
    # IIS paths are case-insensitive; clients write both spellings.
    return [
        Route(PATH, endpoint, methods=["POST"]),
        Route(PATH.lower(), endpoint, methods=["POST"]),
    ]


async def endpoint(request: Request) -> Response:
    ctx = ctx_of(request)
    body = await request.body()
    try:
        login = await run_in_threadpool(
            authenticator(ctx).authenticate,
            connection_of(request.scope),  # NTLM is bound to the TCP connection
            request.headers.get("authorization"),
        )
    except Challenge as ch:
        return unauthorized(ch.values)
    with ctx.world.lock:
        kind = ctx.world.tenants[login.key].kind
    if kind not in KINDS:
        return Response(b"", status_code=404)  # WorkMail serves no remote PowerShell
    if not body:
        # The empty POST a client sends to set up message encryption: authenticated, nothing
        # to answer (WinRM over HTTPS needs none; answered 200 empty).
        return Response(b"", status_code=200)
    host = request.client.host if request.client else ""
    data, status = await run_in_threadpool(serve, ctx, login, body, host)
    return Response(data, status_code=status, media_type=CONTENT_TYPE)


def serve(ctx: SandboxContext, login: Login, body: bytes, client_ip: str) -> tuple[bytes, int]:
    request_id = ""
    try:
        req = w.parse(body)
        request_id = req.message_id
        table = shells(ctx)
        with table.lock:
            out = dispatch(ctx, table, login, req, client_ip)
        return w.envelope(request_id, out[0], out[1]), 200
    except w.Fault as fault:
        return w.fault_envelope(request_id, fault), 500


def dispatch(
    ctx: SandboxContext, table: Shells, login: Login, req: w.Request, client_ip: str
) -> tuple[str, list[ET.Element]]:
    if req.resource_uri.lower() != RESOURCE_URI.lower():
        # *unverified* wording: WinRM's answer for a configuration the server does not have.
        raise w.Fault(
            w.ERROR_INVALID_RESOURCE_URI,
            "w:InvalidResourceURI",
            f"The WS-Management service cannot process the request because the resource URI "
            f"{req.resource_uri} is not valid on this endpoint (configuration {CONFIGURATION}).",
        )
    now = time.monotonic()
    for stale in [k for k, sh in table.by_id.items() if now - sh.used > IDLE_S]:
        del table.by_id[stale]
    if req.action == "Create":
        return create(table, login, req, client_ip)
    shell = table.by_id.get(req.selectors.get("ShellId", "").upper())
    if shell is None or shell.login.account.upn != login.account.upn:
        raise w.Fault(
            w.ERROR_SHELL_NOT_FOUND,
            "w:InvalidSelectors",
            "The request for the Windows Remote Shell with ShellId "
            f"{req.selectors.get('ShellId', '')} failed because the shell was not found on the "
            "server. Possible causes are: the specified ShellId is incorrect or the shell no "
            "longer exists on the server. Provide the correct ShellId or create a new shell and "
            "retry the operation.",
        )
    shell.used = now
    if req.action == "Delete":
        # A finished pipeline stays until its Signal or the shell's Delete (pypsrp's
        # invoke() sends no Signal); WinRM drops them with the shell.
        for pipe in list(shell.pipelines.values()):
            end_pipeline(shell, pipe)
        shell.pool.begin_close()
        shell.pool.close()
        del table.by_id[shell.shell_id]
        return w.TRANSFER + "DeleteResponse", []
    if req.action == "Command":
        return command(ctx, shell, req)
    if req.action == "Send":
        return send(ctx, shell, req)
    if req.action == "Receive":
        return receive(shell, req)
    return signal(shell, req)


def create(
    table: Shells, login: Login, req: w.Request, client_ip: str
) -> tuple[str, list[ET.Element]]:
    shell_el = req.body.find("rsp:Shell", w.NS)
    if shell_el is None:
        raise w.Fault(2150858774, "w:SchemaValidationError", "The Create body has no Shell.")
    shell_id = (shell_el.get("ShellId") or str(uuid.uuid4())).upper()
    creation = shell_el.find("pwsh:creationXml", w.NS)
    pool = ServerRunspacePool()
    shell = Shell(shell_id, login, pool, client_ip)
    table.by_id[shell_id] = shell
    if creation is not None and creation.text:
        feed(shell, None, base64.b64decode(creation.text))
        process(shell, None)
    ref = w.el("wst", "ResourceCreated")
    w.sub(ref, "wsa", "Address", req.to or "https://localhost/PowerShell")
    params = w.sub(ref, "wsa", "ReferenceParameters")
    w.sub(params, "wsman", "ResourceURI", RESOURCE_URI)
    sel_set = w.sub(params, "wsman", "SelectorSet")
    sel = w.sub(sel_set, "wsman", "Selector", shell_id)
    sel.set("Name", "ShellId")
    info = w.el("rsp", "Shell")
    for name, value in (
        ("ShellId", shell_id),
        ("ResourceUri", RESOURCE_URI),
        ("Owner", login.account.upn),
        ("ClientIP", client_ip),
        ("IdleTimeOut", "PT900.000S"),
        ("InputStreams", "stdin pr"),
        ("OutputStreams", "stdout"),
        ("ShellRunTime", "P0DT0H0M0S"),
        ("ShellInactivity", "P0DT0H0M0S"),
    ):
        w.sub(info, "rsp", name, value)
    return w.TRANSFER + "CreateResponse", [ref, info]


def feed(shell: Shell, pipeline_id: uuid.UUID | None, data: bytes) -> None:
    shell.pool.receive_data(PSRPPayload(data, StreamType.default, pipeline_id))


def process(shell: Shell, ctx: SandboxContext | None) -> None:
    """Handle every complete incoming message; a whole CreatePipeline runs the pipeline."""
    from psrpcore import CreatePipelineEvent

    while True:
        event = shell.pool.next_event()
        if event is None:
            break
        if isinstance(event, CreatePipelineEvent) and ctx is not None:
            pipe = shell.pool.pipeline_table.get(event.pipeline_id)
            if isinstance(pipe, FacePipeline):
                execute(ctx, shell, pipe)
    drain(shell)


def drain(shell: Shell) -> None:
    while True:
        payload = shell.pool.data_to_send(FRAGMENT_BYTES)
        if payload is None:
            return
        shell.outgoing.setdefault(payload.pipeline_id, []).append(payload.data)


def command(ctx: SandboxContext, shell: Shell, req: w.Request) -> tuple[str, list[ET.Element]]:
    line = req.body.find("rsp:CommandLine", w.NS)
    if line is None:
        raise w.Fault(2150858774, "w:SchemaValidationError", "The Command body has no CommandLine.")
    command_id = (line.get("CommandId") or str(uuid.uuid4())).upper()
    pid = uuid.UUID(command_id)
    pipe = FacePipeline(shell.pool, pid)
    shell.pipelines[command_id] = pipe
    for arg in line.findall("rsp:Arguments", w.NS):
        if arg.text:
            feed(shell, pid, base64.b64decode(arg.text))
    process(shell, ctx)
    resp = w.el("rsp", "CommandResponse")
    w.sub(resp, "rsp", "CommandId", command_id)
    return w.SHELL + "CommandResponse", [resp]


def send(ctx: SandboxContext, shell: Shell, req: w.Request) -> tuple[str, list[ET.Element]]:
    for stream in req.body.findall("rsp:Send/rsp:Stream", w.NS):
        cid = stream.get("CommandId")
        pid = uuid.UUID(cid) if cid else None
        if stream.text:
            feed(shell, pid, base64.b64decode(stream.text))
    process(shell, ctx)
    return w.SHELL + "SendResponse", [w.el("rsp", "SendResponse")]


def receive(shell: Shell, req: w.Request) -> tuple[str, list[ET.Element]]:
    desired = req.body.find("rsp:Receive/rsp:DesiredStream", w.NS)
    cid = (desired.get("CommandId") if desired is not None else None) or None
    target = uuid.UUID(cid) if cid else None
    queue = shell.outgoing.get(target, [])
    budget = (req.max_envelope or DEFAULT_MAX_ENVELOPE) - ENVELOPE_OVERHEAD
    chunks: list[bytes] = []
    size = 0
    while queue and (not chunks or size + (len(queue[0]) * 4 + 2) // 3 <= budget):
        chunk = queue.pop(0)
        size += (len(chunk) * 4 + 2) // 3
        chunks.append(chunk)
    if not chunks:
        # WinRM holds a Receive until OperationTimeout and then faults; pypsrp retries on it.
        raise w.Fault(
            w.ERROR_OPERATION_TIMEOUT,
            "w:TimedOut",
            "The WS-Management service cannot complete the operation within the time specified "
            "in OperationTimeout.",
        )
    resp = w.el("rsp", "ReceiveResponse")
    for chunk in chunks:
        attrs = {"Name": "stdout"}
        if cid:
            attrs["CommandId"] = cid.upper()
        s = w.sub(resp, "rsp", "Stream", base64.b64encode(chunk).decode())
        for k, v in attrs.items():
            s.set(k, v)
    if cid:
        pipe = shell.pipelines.get(cid.upper())
        finished = not queue and (
            pipe is not None
            and pipe.state
            in (PSInvocationState.Completed, PSInvocationState.Failed, PSInvocationState.Stopped)
        )
        state = w.sub(resp, "rsp", "CommandState")
        state.set("CommandId", cid.upper())
        state.set("State", w.DONE if finished else w.RUNNING)
    return w.SHELL + "ReceiveResponse", [resp]


def signal(shell: Shell, req: w.Request) -> tuple[str, list[ET.Element]]:
    sig = req.body.find("rsp:Signal", w.NS)
    cid = ((sig.get("CommandId") if sig is not None else None) or "").upper()
    pipe = shell.pipelines.get(cid)
    if pipe is not None:
        end_pipeline(shell, pipe)
    return w.SHELL + "SignalResponse", [w.el("rsp", "SignalResponse")]


def end_pipeline(shell: Shell, pipe: FacePipeline) -> None:
    if pipe.state == PSInvocationState.Running:
        pipe.stop()
    pipe.close()
    shell.pipelines.pop(str(pipe.pipeline_id).upper(), None)
    shell.outgoing.pop(pipe.pipeline_id, None)


# -- running a pipeline ------------------------------------------------------------------
def execute(ctx: SandboxContext, shell: Shell, pipe: FacePipeline) -> None:
    meta = pipe.metadata
    pipe.start()
    commands = list(getattr(meta, "commands", []) or [])
    if len(commands) != 1:
        # Exchange runs a pipeline of several cmdlets; the face serves one command per
        # invocation (what add_cmdlet builds), and says so rather than guessing.
        record = cmdlets.Record(
            "The sandbox's remote PowerShell face runs one command per pipeline.",
            "Coexist.Sandbox.NotModeledException",
            "NotImplemented",
            "NotModeledException",
            "NotModeled",
            terminating=True,
        )
        pipe.fail(error_record(record))
        return
    cmd = commands[0]
    outcome = cmdlets.run_command(
        ctx,
        shell.login.key,
        shell.login.account,
        str(cmd.command_text),
        bool(cmd.is_script),
        list(cmd.parameters),
    )
    for text in outcome.warnings:
        pipe.write_warning(text)
    for row in outcome.rows:
        pipe.write_output(ps_object(cmd.command_text, row))
    terminating = [e for e in outcome.errors if e.terminating]
    for e in outcome.errors:
        if not e.terminating:
            rec = error_record(e)
            pipe.write_error(
                rec.Exception,
                rec.CategoryInfo,
                target_object=rec.TargetObject,
                fully_qualified_error_id=rec.FullyQualifiedErrorId,
            )
    if terminating:
        pipe.fail(error_record(terminating[0]))
    else:
        pipe.complete()


CATEGORY = {c.name: c for c in ErrorCategory}


def error_record(r: cmdlets.Record) -> ErrorRecord:
    exc = NETException(Message=r.message, HResult=-2146233087)
    exc.PSObject.type_names = [r.exception_type, "System.Exception", "System.Object"]
    return ErrorRecord(
        Exception=exc,
        CategoryInfo=ErrorCategoryInfo(
            Category=CATEGORY.get(r.category, ErrorCategory.NotSpecified),
            Activity=r.activity or None,
            Reason=r.reason,
            TargetName=r.target or "",
            TargetType="String" if r.target else "",
        ),
        TargetObject=r.target,
        FullyQualifiedErrorId=r.error_id,
    )


def ps_object(cmdlet: str, row: dict[str, Any]) -> PSObject:
    """An Exchange object as a remote session serialises it: adapted properties, type names."""
    obj = PSObject()
    type_name = cmdlets.OUTPUT_TYPE.get(
        cmdlets_name(cmdlet), "System.Management.Automation.PSObject"
    )
    obj.PSObject.type_names = [type_name, "System.Object"]
    for key, value in row.items():
        if key.startswith("@"):
            continue
        obj.PSObject.adapted_properties.append(PSNoteProperty(key, _ps_value(value)))
    return obj


def cmdlets_name(name: str) -> str:
    for k in cmdlets.OUTPUT_TYPE:
        if k.lower() == name.lower():
            return k
    return name


def _ps_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_ps_value(v) for v in value]
    if isinstance(value, dict):
        return str(value)
    return str(value)
