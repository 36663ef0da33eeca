"""The pipeline configuration file (YAML): names, region, sizes, replicas, rotation schedule.

The shipped default is app/backends/local/pipeline.yml; MODELGATE_PIPELINE_CONFIG points at a
file of the user's own, merged over the default (mappings key by key, lists replaced). Every
value is validated and a bad one raises PipelineConfigError naming its dotted key, e.g.
``environments.staging.replicas: must be an integer 1..10``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.assets import asset_dir
from app.gateway.safety import valid_backend_entry
from app.ml.config import ConfigError as TrainingConfigError
from app.ml.config import TrainingConfig
from app.ml.fairness import FairnessConfig

if TYPE_CHECKING:
    from app.ml.registry import ModelRegistry

# The shipped default's relative paths (data/…) resolve here: the checkout, or the installed
# package's asset folder (app/assets.py).
PROJECT_ROOT = asset_dir("data").parent
DEFAULT_PATH = Path(__file__).resolve().parent / "backends" / "local" / "pipeline.yml"
ENV_VAR = "MODELGATE_PIPELINE_CONFIG"
REQUIRED_ENVIRONMENTS: tuple[str, ...] = ("staging", "prod")
# The environment served at the API's plain name and path; the others are prefixed.
PRODUCTION = "prod"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ENV_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_API_PATH = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}(/[a-z0-9][a-z0-9-]{0,62}){0,2}$")
_SECTIONS = ("workspace", "data", "mlflow", "model", "fairness", "gate", "environments",
             "runtime", "gateway", "keys", "azure", "drift")


class PipelineConfigError(ValueError):
    """The pipeline configuration is invalid; ``key`` is the dotted path of the bad entry."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.detail = message
        super().__init__(f"{key}: {message}")


@dataclass(frozen=True)
class WorkspaceSettings:
    """Where everything lives (seed: ml_workspace_name, ml_location, ml_workspace_rg)."""

    name: str
    region: str
    resource_group: str


@dataclass(frozen=True)
class DataSettings:
    """The dataset to register: its name and the CSV (absolute path)."""

    dataset: str
    path: Path


@dataclass(frozen=True)
class MlflowSettings:
    """Tracking server and experiment; an empty URI means the sqlite store in MODELGATE_HOME."""

    experiment: str
    tracking_uri: str


@dataclass(frozen=True)
class EnvironmentSettings:
    """One scoring environment's size, and whether it changes only through a promotion."""

    name: str
    replicas: int
    cpu: float
    memory_mb: int
    protected: bool = False


@dataclass(frozen=True)
class RuntimeSettings:
    """The local runtime that supervises scoring replicas."""

    host: str
    ready_timeout_seconds: float


@dataclass(frozen=True)
class GatewaySettings:
    """How the scoring API is published, and what its policies may do beyond the defaults."""

    api_name: str
    api_path: str
    rate_limit_per_minute: int
    # https hosts (host or host:port) a policy's set-backend-service may point at, besides the
    # environment's recorded backend
    allowed_backends: tuple[str, ...] = ()
    # gateway API names (e.g. credit-risk-staging) whose policy may serve without validate-jwt
    anonymous_apis: tuple[str, ...] = ()

    def path_for(self, environment: str) -> str:
        """Return the gateway path of an environment (prod at api_path, others prefixed)."""
        return self.api_path if environment == PRODUCTION else f"{environment}/{self.api_path}"

    def name_for(self, environment: str) -> str:
        """Return the gateway API name of an environment (prod plain, others suffixed)."""
        return self.api_name if environment == PRODUCTION else f"{self.api_name}-{environment}"


@dataclass(frozen=True)
class KeySettings:
    """Backend key rotation schedule."""

    rotation_days: int


@dataclass(frozen=True)
class GateSettings:
    """Thresholds a version must meet to be promoted without an override; None: not checked.

    Fairness thresholds apply to every attribute of the version's fairness report, and only
    to the figures it marks meaningful (groups of at least ``fairness.min_group_size``).
    """

    min_heldout_auc: float | None = None
    min_selection_rate_ratio: float | None = None
    max_equalized_odds_gap: float | None = None

    @property
    def configured(self) -> bool:
        """Whether any threshold is set."""
        return any(v is not None for v in vars(self).values())


@dataclass(frozen=True)
class DriftSettings:
    """Drift sampling and checks (app.serving.sampling, app.services.drift).

    Every key is optional; a missing one takes the default below.
    """

    # Share of scored records each scoring replica samples (0 turns sampling off).
    sample_rate: float = 0.1
    # Bound of each environment's sample store: the newest this many records are kept.
    max_samples: int = 10_000
    # A check compares a model version's sample only once it holds this many records.
    min_samples: int = 100
    # PSI bands: below `watch` stable, `watch` to `act` watch, above `act` act.
    watch: float = 0.1
    act: float = 0.25


@dataclass(frozen=True)
class AzureSettings:
    """Names, sizes and networks the azure backend uses (ignored by the local backend).

    The resource group and region are ``workspace.resource_group`` and ``workspace.region``.
    """

    subscription_id: str
    tenant_id: str
    compute_name: str
    compute_vm_size: str
    compute_max_nodes: int
    aks_cluster: str
    aks_node_size: str
    aks_node_count: int
    vnet_name: str
    vnet_address_range: str
    aks_subnet_range: str
    apim_subnet_range: str
    pod_cidr: str
    service_cidr: str
    dns_service_ip: str
    apim_name: str
    apim_sku: str
    apim_capacity: int
    apim_publisher_name: str
    apim_email: str
    api_app_id: str
    scoring_image: str
    key_grace_seconds: int
    key_vault_uri: str
    smoke_test_via: str
    ready_timeout_seconds: int


@dataclass(frozen=True)
class PipelineConfig:
    """The whole validated configuration."""

    workspace: WorkspaceSettings
    data: DataSettings
    mlflow: MlflowSettings
    model: TrainingConfig
    environments: tuple[EnvironmentSettings, ...]
    runtime: RuntimeSettings
    gateway: GatewaySettings
    keys: KeySettings
    azure: AzureSettings
    drift: DriftSettings = DriftSettings()
    gate: GateSettings = GateSettings()
    source: str = "<mapping>"

    @property
    def fairness(self) -> FairnessConfig:
        """The fairness report's groups (the ``fairness`` section, which training carries)."""
        return self.model.fairness

    def environment(self, name: str) -> EnvironmentSettings:
        """Return one environment (KeyError if it is not configured)."""
        for env in self.environments:
            if env.name == name:
                return env
        raise KeyError(name)

    @property
    def environment_names(self) -> tuple[str, ...]:
        """Configured environment names, in file order."""
        return tuple(env.name for env in self.environments)

    @property
    def protected_environments(self) -> frozenset[str]:
        """Environments that change only through an approved promotion."""
        return frozenset(env.name for env in self.environments if env.protected)

    def to_dict(self) -> dict[str, Any]:
        """Return the mapping form (paths absolute) accepted by :func:`parse_pipeline_config`."""
        return {
            "workspace": vars(self.workspace).copy(),
            "data": {"dataset": self.data.dataset, "path": str(self.data.path)},
            "mlflow": vars(self.mlflow).copy(),
            "model": {k: v for k, v in self.model.to_dict().items() if k != "fairness"},
            "fairness": self.model.fairness.to_dict(),
            "gate": vars(self.gate).copy(),
            "environments": {e.name: {"replicas": e.replicas, "cpu": e.cpu,
                                      "memory_mb": e.memory_mb, "protected": e.protected}
                             for e in self.environments},
            "runtime": vars(self.runtime).copy(),
            "gateway": vars(self.gateway).copy(),
            "keys": vars(self.keys).copy(),
            "azure": vars(self.azure).copy(),
            "drift": vars(self.drift).copy(),
        }


def model_registry(settings: MlflowSettings, home: str | os.PathLike[str]) -> ModelRegistry:
    """Return the registry the settings name: their tracking URI, else home's sqlite store."""
    from app.ml.registry import ModelRegistry

    if settings.tracking_uri:
        # A tracking server decides where artifacts go.
        return ModelRegistry(settings.tracking_uri, None, experiment=settings.experiment)
    local = ModelRegistry.for_home(home)
    return ModelRegistry(local.tracking_uri, local.artifact_location,
                         experiment=settings.experiment)


def config_path() -> Path:
    """Return the file in use: MODELGATE_PIPELINE_CONFIG, else the shipped default."""
    raw = os.environ.get(ENV_VAR, "").strip()
    return Path(raw).expanduser() if raw else DEFAULT_PATH


def load_pipeline_config(path: str | os.PathLike[str] | None = None) -> PipelineConfig:
    """Load and validate a pipeline configuration file merged over the shipped default.

    Args:
        path: the YAML file; None means :func:`config_path`.

    Raises:
        PipelineConfigError: the file is unreadable, not YAML, or holds a bad key or value.
    """
    target = Path(path) if path is not None else config_path()
    defaults = _read_yaml(DEFAULT_PATH)
    if target.resolve() == DEFAULT_PATH:
        return parse_pipeline_config(defaults, base_dir=PROJECT_ROOT, source=str(DEFAULT_PATH))
    own = _read_yaml(target)
    # Relative paths in the user's file are relative to that file; the default's data path
    # only counts when the user's file does not set one.
    own_data = own.get("data")
    if not (isinstance(own_data, Mapping) and "path" in own_data):
        defaults["data"]["path"] = str(PROJECT_ROOT / str(defaults["data"]["path"]))
    merged = _merge(defaults, own)
    return parse_pipeline_config(merged, base_dir=target.resolve().parent, source=str(target))


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml  # lazy: only jobs and the registry pages read the file

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PipelineConfigError(str(path), f"cannot read the file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise PipelineConfigError(str(path), f"not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PipelineConfigError(str(path), "the top level must be a mapping of sections")
    return data


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        # A list, and fairness.groups, replace the default's rather than merge into it.
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) \
                and key not in ("candidates", "groups"):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_pipeline_config(data: Mapping[str, Any], *, base_dir: Path = PROJECT_ROOT,
                          source: str = "<mapping>") -> PipelineConfig:
    """Validate a complete configuration mapping (every section present).

    Raises:
        PipelineConfigError: naming the first bad key.
    """
    if not isinstance(data, Mapping):
        raise PipelineConfigError("<top>", "must be a mapping of sections")
    _known(data, "", _SECTIONS)
    model_section = _section(data, "model")
    if "fairness" in model_section:
        raise PipelineConfigError("model.fairness", "unknown key; the fairness report's groups "
                                                    "are the top-level fairness section")
    try:
        # Training carries the fairness section: the train job computes the report.
        model = TrainingConfig.from_dict({**model_section,
                                          "fairness": _section(data, "fairness")},
                                         prefix="model")
    except TrainingConfigError as exc:
        key = exc.key.removeprefix("model.") if exc.key.startswith("model.fairness") \
            else exc.key
        raise PipelineConfigError(key, str(exc).split(": ", 1)[-1]) from None
    return PipelineConfig(
        workspace=_workspace(_section(data, "workspace")),
        data=_data(_section(data, "data"), base_dir),
        mlflow=_mlflow(_section(data, "mlflow")),
        model=model,
        environments=_environments(_section(data, "environments")),
        runtime=_runtime(_section(data, "runtime")),
        gateway=_gateway(_section(data, "gateway")),
        keys=_keys(_section(data, "keys")),
        azure=_azure(_section(data, "azure")),
        drift=_drift(_section(data, "drift")),
        gate=_gate(_section(data, "gate")),
        source=source,
    )


# --------------------------------------------------------------------------- sections


def _workspace(d: Mapping[str, Any]) -> WorkspaceSettings:
    _known(d, "workspace", ("name", "region", "resource_group"))
    return WorkspaceSettings(
        name=_name(d, "name", "workspace"),
        region=_string(d, "region", "workspace"),
        resource_group=_name(d, "resource_group", "workspace"),
    )


def _data(d: Mapping[str, Any], base_dir: Path) -> DataSettings:
    _known(d, "data", ("dataset", "path"))
    raw = _string(d, "path", "data")
    path = Path(raw).expanduser()
    return DataSettings(dataset=_name(d, "dataset", "data"),
                        path=path if path.is_absolute() else (base_dir / path).resolve())


def _mlflow(d: Mapping[str, Any]) -> MlflowSettings:
    _known(d, "mlflow", ("experiment", "tracking_uri"))
    return MlflowSettings(experiment=_string(d, "experiment", "mlflow"),
                          tracking_uri=_string(d, "tracking_uri", "mlflow", allow_empty=True))


def _environments(d: Mapping[str, Any]) -> tuple[EnvironmentSettings, ...]:
    for name in REQUIRED_ENVIRONMENTS:
        if name not in d:
            raise PipelineConfigError(f"environments.{name}", "is required")
    out = []
    for name, raw in d.items():
        where = f"environments.{name}"
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise PipelineConfigError(where, "environment names are lower-case letters, "
                                             "digits and dashes, starting with a letter")
        if not isinstance(raw, Mapping):
            raise PipelineConfigError(where, "must be a mapping with replicas, cpu, memory_mb")
        _known(raw, where, ("replicas", "cpu", "memory_mb", "protected"))
        protected = raw.get("protected", False)
        if not isinstance(protected, bool):
            raise PipelineConfigError(f"{where}.protected", "must be true or false")
        out.append(EnvironmentSettings(
            name=name,
            replicas=_integer(raw, "replicas", where, 1, 10),
            cpu=_number(raw, "cpu", where, 0.05, 64),
            memory_mb=_integer(raw, "memory_mb", where, 64, 262144),
            protected=protected,
        ))
    return tuple(out)


def _runtime(d: Mapping[str, Any]) -> RuntimeSettings:
    _known(d, "runtime", ("host", "ready_timeout_seconds"))
    host = _string(d, "host", "runtime")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise PipelineConfigError("runtime.host", "must be an IP address") from None
    return RuntimeSettings(host=host,
                           ready_timeout_seconds=_number(d, "ready_timeout_seconds", "runtime",
                                                         1, 3600))


def _gateway(d: Mapping[str, Any]) -> GatewaySettings:
    _known(d, "gateway", ("api_name", "api_path", "rate_limit_per_minute", "allowed_backends",
                          "anonymous_apis"))
    api_path = _string(d, "api_path", "gateway")
    if not _API_PATH.match(api_path):
        raise PipelineConfigError("gateway.api_path",
                                  "must be lower-case path segments like credit-risk")
    return GatewaySettings(api_name=_name(d, "api_name", "gateway"), api_path=api_path,
                           rate_limit_per_minute=_integer(d, "rate_limit_per_minute", "gateway",
                                                          1, 10_000_000),
                           allowed_backends=_list(d, "allowed_backends", "gateway",
                                                  valid_backend_entry,
                                                  "a lower-case host or host:port"),
                           anonymous_apis=_list(d, "anonymous_apis", "gateway",
                                                lambda v: bool(_NAME.match(v)),
                                                "a gateway API name like credit-risk-staging"))


def _keys(d: Mapping[str, Any]) -> KeySettings:
    _known(d, "keys", ("rotation_days",))
    return KeySettings(rotation_days=_integer(d, "rotation_days", "keys", 1, 365))


def _gate(d: Mapping[str, Any]) -> GateSettings:
    fields = tuple(GateSettings.__dataclass_fields__)
    _known(d, "gate", fields)
    values: dict[str, float | None] = {}
    for key in fields:
        if d.get(key) is None:
            values[key] = None
            continue
        values[key] = _number(d, key, "gate", 0, 1)
    return GateSettings(**values)


_AZURE_INTEGERS: dict[str, tuple[int, int]] = {
    "compute_max_nodes": (1, 100), "aks_node_count": (1, 100), "apim_capacity": (1, 12),
    # API Management spreads a named value to its gateway nodes in seconds to minutes
    "key_grace_seconds": (0, 86_400),
    # a deploy's wait for the new online deployment: image pull, model download, probes
    "ready_timeout_seconds": (60, 86_400),
}
_APIM_SKUS = ("Developer", "Premium")  # the two tiers that join a virtual network


def _azure(d: Mapping[str, Any]) -> AzureSettings:
    fields = tuple(AzureSettings.__dataclass_fields__)
    _known(d, "azure", fields)
    values: dict[str, Any] = {f: _string(d, f, "azure", allow_empty=True)
                              for f in fields if f not in _AZURE_INTEGERS}
    for key, (lo, hi) in _AZURE_INTEGERS.items():
        values[key] = _integer(d, key, "azure", lo, hi)
    if values["apim_sku"] not in _APIM_SKUS:
        raise PipelineConfigError("azure.apim_sku", "must be Developer or Premium (the tiers "
                                                   "API Management offers inside a VNET)")
    if values["smoke_test_via"] not in ("apim", "direct"):
        raise PipelineConfigError("azure.smoke_test_via", "must be apim or direct")
    _azure_networks(values)
    return AzureSettings(**values)


def _azure_networks(values: Mapping[str, Any]) -> None:
    """Subnets inside the VNET and apart; pod and service ranges outside it and apart."""
    nets = {}
    for key in ("vnet_address_range", "aks_subnet_range", "apim_subnet_range", "pod_cidr",
                "service_cidr"):
        try:
            nets[key] = ipaddress.ip_network(values[key])
        except ValueError:
            raise PipelineConfigError(f"azure.{key}", "must be a CIDR range like "
                                                      "10.123.0.0/16") from None
    vnet = nets["vnet_address_range"]
    for key in ("aks_subnet_range", "apim_subnet_range"):
        if not nets[key].subnet_of(vnet):  # type: ignore[arg-type]
            raise PipelineConfigError(f"azure.{key}", f"must lie inside "
                                                      f"azure.vnet_address_range ({vnet})")
    if nets["aks_subnet_range"].overlaps(nets["apim_subnet_range"]):
        raise PipelineConfigError("azure.apim_subnet_range",
                                  "must not overlap azure.aks_subnet_range")
    for key in ("pod_cidr", "service_cidr"):
        if nets[key].overlaps(vnet):
            # The seed passed the VNET range as the service CIDR, which AKS rejects or misroutes.
            raise PipelineConfigError(f"azure.{key}", "must not overlap "
                                                      "azure.vnet_address_range")
    if nets["pod_cidr"].overlaps(nets["service_cidr"]):
        raise PipelineConfigError("azure.service_cidr", "must not overlap azure.pod_cidr")
    try:
        dns = ipaddress.ip_address(values["dns_service_ip"])
    except ValueError:
        raise PipelineConfigError("azure.dns_service_ip", "must be an IP address") from None
    if dns not in nets["service_cidr"]:
        raise PipelineConfigError("azure.dns_service_ip", "must lie inside azure.service_cidr")


def _drift(d: Mapping[str, Any]) -> DriftSettings:
    defaults = DriftSettings()
    fields = tuple(DriftSettings.__dataclass_fields__)
    _known(d, "drift", fields)
    given = {**vars(defaults), **{k: v for k, v in d.items() if v is not None}}
    settings = DriftSettings(
        sample_rate=_number(given, "sample_rate", "drift", 0, 1),
        max_samples=_integer(given, "max_samples", "drift", 100, 1_000_000),
        min_samples=_integer(given, "min_samples", "drift", 10, 1_000_000),
        watch=_number(given, "watch", "drift", 0.001, 10),
        act=_number(given, "act", "drift", 0.001, 10),
    )
    if settings.min_samples > settings.max_samples:
        raise PipelineConfigError("drift.min_samples", "must not exceed drift.max_samples")
    if settings.act <= settings.watch:
        raise PipelineConfigError("drift.act", "must be above drift.watch")
    return settings


# --------------------------------------------------------------------------- values


def _section(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise PipelineConfigError(key, "must be a mapping")
    return value


def _known(d: Mapping[str, Any], where: str, allowed: tuple[str, ...]) -> None:
    for key in d:
        if key not in allowed:
            dotted = f"{where}.{key}" if where else str(key)
            raise PipelineConfigError(dotted, f"unknown key; expected one of "
                                              f"{', '.join(allowed)}")


def _required(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d or d[key] is None:
        raise PipelineConfigError(f"{where}.{key}", "is required")
    return d[key]


def _string(d: Mapping[str, Any], key: str, where: str, *, allow_empty: bool = False) -> str:
    value = _required(d, key, where)
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise PipelineConfigError(f"{where}.{key}", "must be a non-empty string"
                                  if not allow_empty else "must be a string")
    return value.strip()


def _list(d: Mapping[str, Any], key: str, where: str, valid: Callable[[str], bool],
          what: str) -> tuple[str, ...]:
    """An optional list of strings, each checked (missing or null: empty)."""
    value = d.get(key)
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise PipelineConfigError(f"{where}.{key}", f"must be a list, each item {what}")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not valid(item):
            raise PipelineConfigError(f"{where}.{key}[{index}]", f"must be {what}")
    return tuple(value)


def _name(d: Mapping[str, Any], key: str, where: str) -> str:
    value = _string(d, key, where)
    if not _NAME.match(value):
        raise PipelineConfigError(f"{where}.{key}", "must be 1-63 letters, digits, '.', '_' "
                                                    "or '-', starting with a letter or digit")
    return value


def _integer(d: Mapping[str, Any], key: str, where: str, lo: int, hi: int) -> int:
    value = _required(d, key, where)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise PipelineConfigError(f"{where}.{key}", f"must be an integer {lo}..{hi}")
    return value


def _number(d: Mapping[str, Any], key: str, where: str, lo: float, hi: float) -> float:
    value = _required(d, key, where)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not lo <= value <= hi:
        raise PipelineConfigError(f"{where}.{key}", f"must be a number {lo:g}..{hi:g}")
    return float(value)
