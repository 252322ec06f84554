"""The one model of agentops resources, shared by every component.

Every component reads and writes AgentDeployments, AgentPipelines, policies and
prompt revisions through these classes; nothing else in the project redefines
their fields.  The CRDs in ``deploy/crds/`` are generated from these classes
(see :mod:`contracts.crd`), so the API server's validation and ours never drift.

Field names are the Kubernetes (camelCase) names as aliases; Python code uses
snake_case.  Dump with ``model.to_k8s()`` to get what the API server stores.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, ClassVar, Literal, Self, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "agentops.agentops.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: Annotations stamped by the mutating webhook; never trusted from a client.
ANNOTATION_PREFIX = f"{GROUP}/"
PROMPT_SHA256 = f"{GROUP}/prompt-sha256"
PROMPT_PREVIOUS_SHA256 = f"{GROUP}/prompt-previous-sha256"
PROMPT_CHANGED_BY = f"{GROUP}/prompt-changed-by"
PROMPT_CHANGED_BY_UID = f"{GROUP}/prompt-changed-by-uid"
PROMPT_CHANGED_BY_GROUPS = f"{GROUP}/prompt-changed-by-groups"
PROMPT_CHANGED_AT = f"{GROUP}/prompt-changed-at"
#: Supplied by the user; kept as given.
CHANGE_REASON = f"{GROUP}/change-reason"
#: Audit-mode policy violations recorded on the object by the webhook.
POLICY_VIOLATIONS = f"{GROUP}/policy-violations"
#: The prompt-audit stamps, in the order they are reported.
PROMPT_STAMPS: tuple[str, ...] = (
    PROMPT_SHA256,
    PROMPT_PREVIOUS_SHA256,
    PROMPT_CHANGED_BY,
    PROMPT_CHANGED_BY_UID,
    PROMPT_CHANGED_BY_GROUPS,
    PROMPT_CHANGED_AT,
)
#: Every annotation the webhook computes itself and overwrites on each request.
STAMPED_ANNOTATIONS: tuple[str, ...] = (*PROMPT_STAMPS, POLICY_VIOLATIONS)

#: Labels the controller puts on what it owns.
LABEL_AGENT = f"{GROUP}/agent"
LABEL_PIPELINE = f"{GROUP}/pipeline"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"

#: The finalizer the controller (kopf) puts on the agents and pipelines it runs timers and daemons
#: for; only a running controller removes it, or ``agentops uninstall`` when none is left.
CONTROLLER_FINALIZER = "controller.agentops.io/finalizer"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SHA256_HEX = r"^[a-f0-9]{64}$"

Provider = Literal["anthropic", "openai", "offline"]
ProbeType = Literal["semantic", "ping"]
PolicyMode = Literal["Enforce", "Warn", "Audit"]
BudgetPeriod = Literal["day", "month"]
BudgetScope = Literal["Agent", "Namespace"]
AutoscalingEngine = Literal["builtin", "keda"]
PipelinePhase = Literal["Pending", "Running", "Succeeded", "Failed"]
StepPhase = Literal["Pending", "Waiting", "Running", "Succeeded", "Failed", "Skipped"]
ConditionStatus = Literal["True", "False", "Unknown"]

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
NonEmptyStr = Annotated[str, Field(min_length=1)]


class Model(BaseModel):
    """Base for every part of a resource: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )

    def to_k8s(self) -> dict[str, Any]:
        """The JSON the API server stores: aliases, no unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    @classmethod
    def fields_by_alias(cls) -> dict[str, str]:
        """Kubernetes (camelCase) name -> Python attribute of each field, in declaration order.

        Read from the aliases pydantic generated, so code that walks fields by their Kubernetes
        name (the limit names, say) never keeps a second copy of the mapping.
        """
        return {info.alias or name: name for name, info in cls.model_fields.items()}


# --- common parts --------------------------------------------------------------------------------


class ObjectMeta(BaseModel):
    """The part of Kubernetes ObjectMeta we read; the rest is kept as given."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    creation_timestamp: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class Condition(Model):
    type: NonEmptyStr
    status: ConditionStatus
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    observed_generation: int | None = None


class LabelSelectorRequirement(Model):
    key: NonEmptyStr
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class LabelSelector(Model):
    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)


class SecretKeyRef(Model):
    name: NonEmptyStr
    key: NonEmptyStr = "api-key"


# --- AgentDeployment -----------------------------------------------------------------------------


class Limits(Model):
    """Mandatory limits.  Missing values are filled by the webhook from policy defaults."""

    max_tokens_per_call: PositiveInt | None = None
    max_concurrent_tasks: PositiveInt | None = None
    timeout_seconds: PositiveInt | None = None

    #: The limit names (Kubernetes spelling) in the order they are reported; set from the fields below.
    NAMES: ClassVar[tuple[str, ...]]


Limits.NAMES = tuple(Limits.fields_by_alias())


class LivenessProbe(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.type != 'semantic' || has(self.validatorPrompt)",
                    "message": "a semantic probe needs validatorPrompt",
                }
            ]
        }
    )

    type: ProbeType
    interval_seconds: PositiveInt = 60
    validator_prompt: NonEmptyStr | None = None
    expect: NonEmptyStr = "HEALTHY"


class Credentials(Model):
    secret_ref: SecretKeyRef


class Autoscaling(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
                    "message": "minReplicas must not exceed maxReplicas",
                }
            ]
        }
    )

    min_replicas: NonNegativeInt = 1
    max_replicas: PositiveInt
    target_pending_per_replica: PositiveInt = 5
    engine: AutoscalingEngine = "builtin"
    cooldown_seconds: NonNegativeInt = 60


class AgentDeploymentSpec(Model):
    replicas: NonNegativeInt = 1
    model: NonEmptyStr
    provider: Provider | None = None
    system_prompt: NonEmptyStr
    limits: Limits | None = None
    liveness_probe: LivenessProbe | None = None
    credentials: Credentials | None = None
    autoscaling: Autoscaling | None = None

    def effective_provider(self) -> Provider:
        """The provider named in the spec, or the one the model name implies."""
        return self.provider or infer_provider(self.model)


class Usage(Model):
    period: str | None = None
    tokens: NonNegativeInt = 0
    cost_usd: float = Field(default=0.0, alias="costUSD")
    remaining_tokens: int | None = None
    remaining_cost_usd: float | None = Field(default=None, alias="remainingCostUSD")


class AgentDeploymentStatus(Model):
    replicas: NonNegativeInt = 0
    ready_replicas: NonNegativeInt = 0
    selector: str | None = None
    observed_generation: int | None = None
    prompt_hash: str | None = None
    prompt_revision: int | None = None
    effective_provider: str | None = None
    usage: Usage | None = None
    conditions: list[Condition] = Field(default_factory=list)


# --- AgentPipeline -------------------------------------------------------------------------------


class PipelineStep(Model):
    name: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]
    agent_deployment: Annotated[str, Field(pattern=DNS_LABEL, max_length=253)]
    inputs: dict[str, str] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    timeout_seconds: PositiveInt | None = None
    retries: Annotated[int, Field(ge=0, le=10)] = 0


class AgentPipelineSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.steps.all(s, self.steps.exists_one(t, t.name == s.name))",
                    "message": "step names must be unique",
                }
            ]
        }
    )

    input: dict[str, str] = Field(default_factory=dict)
    steps: Annotated[list[PipelineStep], Field(min_length=1, max_length=100)]
    output: str | None = None
    fail_fast: bool = True


class StepStatus(Model):
    name: str
    phase: StepPhase = "Pending"
    task_id: str | None = None
    attempts: NonNegativeInt = 0
    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    output: str | None = None
    output_truncated: bool | None = None
    message: str | None = None


class AgentPipelineStatus(Model):
    phase: PipelinePhase = "Pending"
    progress: str | None = None
    steps: list[StepStatus] = Field(default_factory=list)
    output: str | None = None
    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)


# --- policies ------------------------------------------------------------------------------------


class LimitRule(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.default) || !has(self.max) || self.default <= self.max",
                    "message": "default must not exceed max",
                }
            ]
        }
    )

    default: PositiveInt | None = None
    max: PositiveInt | None = None


class LimitRules(Model):
    max_tokens_per_call: LimitRule | None = None
    max_concurrent_tasks: LimitRule | None = None
    timeout_seconds: LimitRule | None = None


class ReplicaRules(Model):
    max: NonNegativeInt | None = None


class ModelRules(Model):
    allowed: list[NonEmptyStr] | None = None


class PromptRules(Model):
    max_bytes: PositiveInt | None = None
    require_change_reason: bool | None = None


class ProbeRules(Model):
    min_interval_seconds: PositiveInt | None = None


class PipelineRules(Model):
    max_steps: PositiveInt | None = None


class Budget(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.tokens) || has(self.costUSD)", "message": "set tokens, costUSD or both"}
            ]
        }
    )

    period: BudgetPeriod = "month"
    tokens: PositiveInt | None = None
    cost_usd: Annotated[float, Field(gt=0)] | None = Field(default=None, alias="costUSD")
    scope: BudgetScope = "Agent"


class ExceptionRules(Model):
    """Whether AgentPolicyExceptions may excuse this policy's rules, and for how long at most."""

    allowed: bool = True
    max_duration_hours: PositiveInt | None = None


class PolicySpec(Model):
    """What ClusterAgentPolicy and AgentPolicy share."""

    mode: PolicyMode = "Enforce"
    selector: LabelSelector | None = None
    limits: LimitRules | None = None
    replicas: ReplicaRules | None = None
    models: ModelRules | None = None
    prompts: PromptRules | None = None
    probes: ProbeRules | None = None
    pipelines: PipelineRules | None = None
    budget: Budget | None = None
    exceptions: ExceptionRules | None = None


class ClusterAgentPolicySpec(PolicySpec):
    namespace_selector: LabelSelector | None = None


class AgentPolicySpec(PolicySpec):
    pass


#: The rules a policy imposes, named by the policy field that sets them; what an
#: AgentPolicyException names, what policy reports and ``agentops policy test`` call a rule.
PolicyRule = Literal[
    "limits.maxTokensPerCall",
    "limits.maxConcurrentTasks",
    "limits.timeoutSeconds",
    "replicas.max",
    "models.allowed",
    "prompts.maxBytes",
    "prompts.requireChangeReason",
    "probes.minIntervalSeconds",
    "pipelines.maxSteps",
    "budget",
]
POLICY_RULES: tuple[str, ...] = get_args(PolicyRule)
PolicyKind = Literal["ClusterAgentPolicy", "AgentPolicy"]


# --- AgentPolicyException ------------------------------------------------------------------------


class ExceptedPolicy(Model):
    """Rules of one policy an exception excuses; an AgentPolicy is the exception's namespace's."""

    kind: PolicyKind = "ClusterAgentPolicy"
    name: Annotated[str, Field(min_length=1, max_length=253)]
    rules: Annotated[list[PolicyRule], Field(min_length=1)]

    @property
    def source(self) -> str:
        """``Kind/name``, the way the engine's messages name a policy."""
        return f"{self.kind}/{self.name}"


class AgentPolicyExceptionSpec(Model):
    agents: Annotated[list[Annotated[str, Field(pattern=DNS_LABEL, max_length=253)]], Field(min_length=1)]
    policies: Annotated[list[ExceptedPolicy], Field(min_length=1)]
    #: RFC 3339 with a zone offset (``2026-03-01T18:00:00Z``); a time without one is refused.
    expires_at: AwareDatetime = Field(json_schema_extra={"format": "date-time"})
    reason: Annotated[str, Field(min_length=1)]


# --- AgentPromptRevision -------------------------------------------------------------------------


class Author(Model):
    username: str
    uid: str | None = None
    groups: list[str] = Field(default_factory=list)


class AgentPromptRevisionSpec(Model):
    agent: Annotated[str, Field(pattern=DNS_LABEL, max_length=253)]
    revision: PositiveInt
    prompt: str
    sha256: Annotated[str, Field(pattern=SHA256_HEX)]
    previous_sha256: Annotated[str, Field(pattern=SHA256_HEX)] | None = None
    author: Author
    reason: str | None = None
    time: str = Field(json_schema_extra={"format": "date-time"})


# --- top-level resources -------------------------------------------------------------------------


class Resource(BaseModel):
    """A whole Kubernetes object of one of our kinds."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ()
    NAMESPACED: ClassVar[bool] = True

    api_version: Literal["agentops.agentops.io/v1alpha1"] = "agentops.agentops.io/v1alpha1"
    kind: str
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    @classmethod
    def from_k8s(cls, obj: dict[str, Any]) -> Self:
        """Validate a stored or submitted object (raises pydantic.ValidationError)."""
        return cls.model_validate(obj)

    def to_k8s(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class AgentDeployment(Resource):
    KIND = "AgentDeployment"
    PLURAL = "agentdeployments"
    SHORT_NAMES = ("agdep",)
    kind: Literal["AgentDeployment"] = "AgentDeployment"
    spec: AgentDeploymentSpec
    status: AgentDeploymentStatus | None = None


class AgentPipeline(Resource):
    KIND = "AgentPipeline"
    PLURAL = "agentpipelines"
    SHORT_NAMES = ("agpipe",)
    kind: Literal["AgentPipeline"] = "AgentPipeline"
    spec: AgentPipelineSpec
    status: AgentPipelineStatus | None = None


class ClusterAgentPolicy(Resource):
    KIND = "ClusterAgentPolicy"
    PLURAL = "clusteragentpolicies"
    SHORT_NAMES = ("cagpol",)
    NAMESPACED = False
    kind: Literal["ClusterAgentPolicy"] = "ClusterAgentPolicy"
    spec: ClusterAgentPolicySpec


class AgentPolicy(Resource):
    KIND = "AgentPolicy"
    PLURAL = "agentpolicies"
    SHORT_NAMES = ("agpol",)
    kind: Literal["AgentPolicy"] = "AgentPolicy"
    spec: AgentPolicySpec


class AgentPolicyException(Resource):
    KIND = "AgentPolicyException"
    PLURAL = "agentpolicyexceptions"
    SHORT_NAMES = ("agpolex",)
    kind: Literal["AgentPolicyException"] = "AgentPolicyException"
    spec: AgentPolicyExceptionSpec


class AgentPromptRevision(Resource):
    KIND = "AgentPromptRevision"
    PLURAL = "agentpromptrevisions"
    SHORT_NAMES = ("agrev",)
    kind: Literal["AgentPromptRevision"] = "AgentPromptRevision"
    spec: AgentPromptRevisionSpec


RESOURCES: tuple[type[Resource], ...] = (
    AgentDeployment,
    AgentPipeline,
    ClusterAgentPolicy,
    AgentPolicy,
    AgentPromptRevision,
    AgentPolicyException,
)
RESOURCE_BY_KIND: dict[str, type[Resource]] = {r.KIND: r for r in RESOURCES}
RESOURCE_BY_PLURAL: dict[str, type[Resource]] = {r.PLURAL: r for r in RESOURCES}


def prompt_sha256(prompt: str) -> str:
    """The hash that identifies a system prompt everywhere: sha256 of its UTF-8 bytes, hex."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def infer_provider(model: str) -> Provider:
    """Guess the provider from a model name: ``claude-*`` is Anthropic, ``gpt-*``/``o*`` OpenAI."""
    name = model.lower()
    if name.startswith("claude"):
        return "anthropic"
    if name.startswith("offline"):
        return "offline"
    return "openai"
