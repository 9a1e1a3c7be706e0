"""The two daemons as the operator tooling names them: settings class, shipped env file, installed env file, unit."""

from __future__ import annotations

from dataclasses import dataclass

from microservices.allocation_target.settings import ProposerSettings
from microservices.core.settings import CommonSettings, env_fields
from microservices.governor.settings import GovernorSettings

#: Where the env files are installed on the VPS (SPEC §7): ``/etc/quantum/p31/<name>.env``.
INSTALLED_ENV_DIR = "/etc/quantum/p31"


@dataclass(frozen=True)
class DaemonInfo:
    name: str
    title: str
    settings_class: type[CommonSettings]
    #: The env file in the repository, relative to its root.
    shipped_env: str
    unit: str

    @property
    def installed_env(self) -> str:
        return f"{INSTALLED_ENV_DIR}/{self.name}.env"

    @property
    def variables(self) -> frozenset[str]:
        """Every environment variable the daemon reads."""
        return frozenset(f.metadata["env"] for f in env_fields(self.settings_class))


ALLOCATION_TARGET = DaemonInfo(
    name="allocation-target",
    title="P3.1 Step 1, the shadow allocation proposer",
    settings_class=ProposerSettings,
    shipped_env="deploy/allocation-target.env",
    unit="quantum-allocation-target.service",
)
GOVERNOR = DaemonInfo(
    name="governor",
    title="P3.1 Step 2, the plan governor",
    settings_class=GovernorSettings,
    shipped_env="deployment/config/governor.env",
    unit="quantum-governor.service",
)
DAEMONS: dict[str, DaemonInfo] = {d.name: d for d in (ALLOCATION_TARGET, GOVERNOR)}
