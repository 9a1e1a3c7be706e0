"""The operator documentation stays true to the code and the shipped files.

`docs/P3.1_STEP1_STEP2_INTEGRATION.md` (the reference and runbook) and `DEPLOYMENT_VPS_P31_INTEGRATION.md` (install,
upgrade, roll back) name settings, defaults, metrics, alerts, `p31ctl` commands and repo paths. Each kind of name is
checked here against its source of truth — the settings classes, the metrics registries, the alert rules file, the
`p31ctl` argument parser, the working tree — so a doc that drifts from the code fails `make test`.

Each check is a function from the doc text to a list of problems (empty when the doc is true); the tests assert the
real docs have none, and that a doc broken on purpose does have them, so the checks themselves can fail.
"""

from __future__ import annotations

import argparse
import glob
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, Field, dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from microservices.allocation_target.metrics import ProposerMetrics
from microservices.allocation_target.settings import ProposerSettings
from microservices.core.settings import ConfigError, Settings, env_fields, load_settings
from microservices.governor.metrics import GovernorMetrics
from microservices.governor.settings import GovernorSettings
from microservices.ops.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
INTEGRATION_DOC = "docs/P3.1_STEP1_STEP2_INTEGRATION.md"
DEPLOYMENT_DOC = "DEPLOYMENT_VPS_P31_INTEGRATION.md"
DOCS = (INTEGRATION_DOC, DEPLOYMENT_DOC)
ALERT_RULES = "deploy/prometheus/p31-alerts.yml"
UNITS = ("deploy/systemd/quantum-allocation-target.service", "deploy/systemd/quantum-governor.service")

#: The headings (level 3) of the integration doc's settings tables. The shared table lists what both daemons read
#: with the same default; each daemon's own table lists the rest, METRICS_PORT included (its default differs).
SHARED_SETTINGS = "Settings both daemons read"
OWN_SETTINGS: Mapping[type[Settings], str] = {
    ProposerSettings: "Proposer settings",
    GovernorSettings: "Governor settings",
}
#: The headings (level 3, by prefix) of the integration doc's metrics tables.
METRICS_TABLES = {"proposer": "Proposer metrics", "governor": "Governor metrics"}
RUNBOOK = "Runbook"

#: An upper-case word that looks like one of the daemons' environment variables.
SETTING_TOKEN = re.compile(
    r"(?<![\w-])(?:P31|GOV|REDIS|METRICS|PROPOSE|PERMIT|LOOP|STREAM)_[A-Z0-9_]*[A-Z0-9](?![\w-])"
)
#: Words that look like settings but are not read by the daemons (none so far: keep this list short and explained).
NON_SETTINGS: frozenset[str] = frozenset()
#: A lower-case word that looks like one of the daemons' metrics.
METRIC_TOKEN = re.compile(r"(?<![\w:.-])(?:p29|p32|quantum_govern)_[a-z0-9_]*[a-z0-9](?![\w-])")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
#: A path inside the repository (relative to its root), as named in code spans and code blocks.
REPO_PATH = re.compile(r"(?<![\w./~-])(?:deploy|deployment|scripts|microservices|docs|tests)/[\w./*-]*[\w*]")
#: A relative markdown link target.
LINK = re.compile(r"\]\((?!https?://|#|mailto:)([^)#\s]+)(?:#[^)]*)?\)")
#: The shell tokens that end a p31ctl command on a line.
COMMAND_END = re.compile(r"\s(?:\||;|&&|\|\||>|2>|#)\s")


def read(doc: str) -> str:
    return (REPO / doc).read_text(encoding="utf-8")


# --- markdown ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Markdown:
    """A markdown text split into prose lines and fenced code blocks, which is all these checks need."""

    text: str

    def lines(self) -> Iterator[tuple[str, bool]]:
        """Every line with whether it is inside a fenced code block (fence lines themselves count as inside)."""
        fenced = False
        for line in self.text.splitlines():
            if line.lstrip().startswith("```"):
                fenced = not fenced
                yield line, True
                continue
            yield line, fenced

    def sections(self, level: int) -> dict[str, str]:
        """Heading text -> the text under it, up to the next heading of this level or higher. Lines inside code
        blocks (``# comment`` in a shell block) are not headings."""
        found: dict[str, list[str]] = {}
        current: list[str] | None = None
        for line, fenced in self.lines():
            heading = None if fenced else re.match(r"(#{1,6}) (.*)", line)
            if heading is not None and len(heading.group(1)) <= level:
                current = None
                if len(heading.group(1)) == level:
                    current = found.setdefault(heading.group(2).strip(), [])
                continue
            if current is not None:
                current.append(line)
        return {title: "\n".join(body) for title, body in found.items()}

    def section(self, level: int, title_prefix: str) -> str:
        matches = [body for title, body in self.sections(level).items() if title.startswith(title_prefix)]
        assert len(matches) == 1, f"expected one level-{level} heading starting with {title_prefix!r}"
        return matches[0]

    def code(self) -> list[str]:
        """The text of every inline code span (outside code blocks) and every code block line."""
        found: list[str] = []
        for line, fenced in self.lines():
            if fenced:
                if not line.lstrip().startswith("```"):
                    found.append(line)
            else:
                found.extend(re.findall(r"`([^`]+)`", line))
        return found


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the markdown tables in ``text``, as stripped cells (``\\|`` is a pipe inside a cell)."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if all(re.fullmatch(r":?-+:?", cell) for cell in cells):
            rows.pop()  # the row above the separator is the header
            continue
        rows.append(cells)
    return rows


def unquote(cell: str) -> str | None:
    """The content of a cell that is exactly one code span, else None."""
    match = re.fullmatch(r"`([^`]*)`", cell)
    return match.group(1) if match else None


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


# --- settings ------------------------------------------------------------------------------------------------------


def env_name(f: Field[Any]) -> str:
    return str(f.metadata["env"])


def settings_of(cls: type[Settings]) -> dict[str, Field[Any]]:
    return {env_name(f): f for f in env_fields(cls)}


ALL_SETTINGS: frozenset[str] = frozenset(settings_of(ProposerSettings)) | frozenset(settings_of(GovernorSettings))


_PARSED: dict[tuple[type[Settings], str, str], object] = {}


def parsed_setting(cls: type[Settings], variable: str, text: str) -> object:
    """``text`` as the daemon reads ``variable`` from its environment, or the error it refuses it with. Cached:
    building a settings object checks every field, and each doc check parses every default again."""
    key = (cls, variable, text)
    if key not in _PARSED:
        try:
            settings = load_settings(cls, {variable: text})
            _PARSED[key] = next(getattr(settings, f.name) for f in env_fields(cls) if env_name(f) == variable)
        except ConfigError as exc:
            _PARSED[key] = exc
    return _PARSED[key]


def default_problem(cls: type[Settings], f: Field[Any], cell: str) -> str | None:
    """Why the documented default ``cell`` is not the code's default of ``f``, or None.

    A value is written as one code span and must parse, as the daemon would parse it from the environment, to
    exactly the default (``600`` for 600.0 is fine, ``0.6`` for 0.65 is not); no default is ``(unset)``; a default
    computed at start-up (the host name) is a description in parentheses."""
    variable = env_name(f)
    if f.default is MISSING:
        return None if re.fullmatch(r"\([^)]+\)", cell) else f"computed default shown as {cell!r}, not '(...)'"
    if f.default is None:
        return None if cell == "(unset)" else f"no default in the code, the doc says {cell!r}"
    text = unquote(cell)
    if text is None:
        return f"default {cell!r} is not one code span"
    value = parsed_setting(cls, variable, text)
    if isinstance(value, ConfigError):
        return f"documented default {text!r} is refused: {value}"
    if value != f.default or type(value) is not type(f.default):
        return f"documented default {text!r}, the code's is {f.default!r}"
    return None


def settings_table(md: Markdown, title: str) -> dict[str, str]:
    """variable -> default cell of a settings table (rows whose first cell is one code span)."""
    table: dict[str, str] = {}
    for cells in table_rows(md.section(3, title)):
        variable = unquote(cells[0])
        if variable is not None:
            table[variable] = cells[1]
    return table


def settings_table_problems(text: str) -> list[str]:
    """Each daemon's settings (shared table plus its own) are exactly the variables it reads, with its defaults."""
    md = Markdown(text)
    problems: list[str] = []
    shared = settings_table(md, SHARED_SETTINGS)
    for cls, title in OWN_SETTINGS.items():
        own = settings_table(md, title)
        fields = settings_of(cls)
        for variable in sorted(shared.keys() & own.keys()):
            problems.append(f"{variable} is in both the shared table and {title!r}")
        documented = {**shared, **own}
        for variable in sorted(fields.keys() - documented.keys()):
            problems.append(f"{cls.__name__} reads {variable}, which no settings table of it documents")
        for variable in sorted(documented.keys() - fields.keys()):
            where = "the shared table" if variable in shared else repr(title)
            problems.append(f"{variable} is documented in {where} but {cls.__name__} does not read it")
        for variable in sorted(documented.keys() & fields.keys()):
            problem = default_problem(cls, fields[variable], documented[variable])
            if problem is not None:
                problems.append(f"{cls.__name__} {variable}: {problem}")
    return problems


def setting_token_problems(text: str) -> list[str]:
    """Every word that looks like a setting is one the daemons read."""
    unknown = set(SETTING_TOKEN.findall(text)) - ALL_SETTINGS - NON_SETTINGS
    return [f"{token} looks like a setting but no daemon reads it" for token in sorted(unknown)]


# --- metrics -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedMetric:
    name: str  # as Prometheus exposes it: counters with _total
    type: str
    labels: tuple[str, ...]


def exported_metrics(metrics: object, registry: CollectorRegistry) -> dict[str, ExportedMetric]:
    """What a daemon's metrics object exports, read from its registry; labels from the metric objects (a labelled
    series with no child yet has no sample to show its labels)."""
    labels = {
        wrapper._name: tuple(wrapper._labelnames)
        for wrapper in vars(metrics).values()
        if isinstance(wrapper, MetricWrapperBase)
    }
    found: dict[str, ExportedMetric] = {}
    for family in registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        sample_labels = tuple(family.samples[0].labels) if family.samples else ()
        found[name] = ExportedMetric(name, family.type, labels.get(family.name, sample_labels))
    return found


def daemon_metrics() -> dict[str, dict[str, ExportedMetric]]:
    proposer_registry, governor_registry = CollectorRegistry(), CollectorRegistry()
    proposer = ProposerMetrics(proposer_registry, max_symbols=10)
    governor = GovernorMetrics(governor_registry, "hint", max_symbols=10)
    return {
        "proposer": exported_metrics(proposer, proposer_registry),
        "governor": exported_metrics(governor, governor_registry),
    }


def metrics_table_problems(text: str, exported: Mapping[str, Mapping[str, ExportedMetric]]) -> list[str]:
    """Each daemon's metrics table lists exactly what it exports, with the right type and labels."""
    md = Markdown(text)
    problems: list[str] = []
    for daemon, title in METRICS_TABLES.items():
        rows: dict[str, list[str]] = {}
        for cells in table_rows(md.section(3, title)):
            name = unquote(cells[0])
            if name is not None:
                rows[name] = cells
        for name in sorted(exported[daemon].keys() - rows.keys()):
            problems.append(f"the {daemon} exports {name}, which {title!r} does not document")
        for name in sorted(rows.keys() - exported[daemon].keys()):
            problems.append(f"{title!r} documents {name}, which the {daemon} does not export")
        for name in sorted(rows.keys() & exported[daemon].keys()):
            metric, cells = exported[daemon][name], rows[name]
            if cells[1] != metric.type:
                problems.append(f"{name} is a {metric.type}, documented as {cells[1]!r}")
            documented_labels = tuple(re.findall(r"`([^`]+)`", cells[2]))
            if documented_labels != metric.labels:
                problems.append(f"{name} has labels {metric.labels}, documented as {documented_labels}")
    return problems


def metric_token_problems(text: str, exported: Mapping[str, Mapping[str, ExportedMetric]]) -> list[str]:
    """Every word that looks like a metric is one a daemon exports (histograms with their series suffixes)."""
    known: set[str] = set()
    for metrics in exported.values():
        for metric in metrics.values():
            known.add(metric.name)
            if metric.type == "histogram":
                known.update(metric.name + suffix for suffix in HISTOGRAM_SERIES)
    unknown = set(METRIC_TOKEN.findall(text)) - known
    return [f"{token} looks like a metric but no daemon exports it" for token in sorted(unknown)]


# --- alerts and the runbook ----------------------------------------------------------------------------------------


def alert_rules() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load((REPO / ALERT_RULES).read_text(encoding="utf-8"))
    return {rule["alert"]: rule for group in document["groups"] for rule in group["rules"] if "alert" in rule}


def squeeze(text: str) -> str:
    return " ".join(text.split())


def runbook_problems(text: str, alerts: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One ``### <AlertName>`` runbook section per alert and none other; each alert's runbook annotation is that
    section's anchor; each section quotes the rule as it is (expression, ``for``, severity)."""
    md = Markdown(text)
    runbook = Markdown(md.section(2, RUNBOOK)).sections(3)
    problems = [f"runbook section {title!r} names no alert" for title in sorted(runbook.keys() - alerts.keys())]
    for name in sorted(alerts.keys() - runbook.keys()):
        problems.append(f"alert {name} has no '### {name}' section in the runbook")
    for name, rule in sorted(alerts.items()):
        link = rule.get("annotations", {}).get("runbook")
        expected = f"{INTEGRATION_DOC}#{github_anchor(name)}"
        if github_anchor(name) != name.lower() or link != expected:
            problems.append(f"alert {name}: runbook annotation {link!r}, expected {expected!r}")
        body = runbook.get(name)
        if body is None:
            continue
        if squeeze(rule["expr"]) not in squeeze(body):
            problems.append(f"runbook section {name} does not quote the rule's expression as it is")
        duration = f"`for: {rule['for']}`" if "for" in rule else "no `for`"
        if duration not in body:
            problems.append(f"runbook section {name} does not say {duration}")
        severity = f"severity `{rule.get('labels', {}).get('severity')}`"
        if severity not in body:
            problems.append(f"runbook section {name} does not say {severity}")
    return problems


# --- p31ctl --------------------------------------------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands, walked from its subparsers action."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def takes_value(parser: argparse.ArgumentParser, option: str) -> bool | None:
    """Whether ``option`` of ``parser`` takes a value; None when the parser has no such option."""
    action = parser._option_string_actions.get(option)
    return None if action is None else action.nargs != 0


def p31ctl_commands(text: str) -> list[list[str]]:
    """The argument lists of every ``p31ctl`` command line in code spans and code blocks (placeholders kept)."""
    commands: list[list[str]] = []
    for code in Markdown(text).code():
        for match in re.finditer(r"(?<![\w-])p31ctl(?![\w-])(.*)", code):
            rest = COMMAND_END.split(" " + match.group(1) + " ")[0]
            tokens = [token.strip("[]") for token in shlex.split(rest.replace("\\|", "|"), posix=True)]
            commands.append([token for token in tokens if token])
    return commands


def p31ctl_problems(text: str, parser: argparse.ArgumentParser) -> list[str]:
    """Every ``p31ctl`` command line names a real subcommand and only options that command (or p31ctl) has."""
    problems: list[str] = []
    commands = subcommands(parser)
    for tokens in p31ctl_commands(text):
        current, command = parser, None
        skip_value = False
        for token in tokens:
            if skip_value:
                skip_value = False
                continue
            if token.startswith("-"):
                option = token.split("=", 1)[0]
                value = takes_value(current, option)
                if value is None:
                    problems.append(f"p31ctl {command or ''}: no option {option} ({' '.join(tokens)})")
                skip_value = bool(value) and "=" not in token
            elif command is None:
                if token not in commands:
                    problems.append(f"p31ctl has no subcommand {token!r} ({' '.join(tokens)})")
                    break
                command, current = token, commands[token]
            elif token in subcommands(current):  # a second level: dlq list, dlq requeue
                command, current = f"{command} {token}", subcommands(current)[token]
    return problems


# --- systemd units -------------------------------------------------------------------------------------------------


def unit_directives() -> dict[str, set[str]]:
    """Directive -> the values it has across the shipped units (a directive may repeat, e.g. SystemCallFilter=)."""
    found: dict[str, set[str]] = {}
    for unit in UNITS:
        for line in (REPO / unit).read_text(encoding="utf-8").splitlines():
            match = re.fullmatch(r"([A-Z][A-Za-z]+)=(.*)", line.strip())
            if match is not None:
                found.setdefault(match.group(1), set()).add(match.group(2))
    return found


def unit_directive_problems(text: str, directives: Mapping[str, set[str]]) -> list[str]:
    """Every ``Directive=value`` a doc quotes, for a directive the units use, is a value the units have (``Directive=``
    with no value names the directive only)."""
    problems: list[str] = []
    for code in Markdown(text).code():
        match = re.fullmatch(r"([A-Z][A-Za-z]+)=(.+)", code.strip())
        if match is not None and match.group(1) in directives and match.group(2) not in directives[match.group(1)]:
            values = sorted(directives[match.group(1)])
            problems.append(f"{code} is not in the units, which have {match.group(1)}= {values}")
    return problems


# --- the Redis ACL ---------------------------------------------------------------------------------------------


def acl_problems(text: str, users: Mapping[str, str]) -> list[str]:
    """The deployment doc gives, for each daemon user, the very ACL rules the security tests prove sufficient (with
    the password as ``PASSWORD``)."""
    problems: list[str] = []
    for user, rules in users.items():
        line = f"ACL SETUSER {user} " + re.sub(r"(?<!\S)>\S+", ">PASSWORD", rules)
        if line not in text:
            problems.append(f"the ACL line of {user} is not {line!r}")
    return problems


def acl_users_of_the_security_tests() -> dict[str, str]:
    from tests.integration.test_security import ACL_USERS

    return dict(ACL_USERS.values())


# --- install.sh's failure messages ---------------------------------------------------------------------------------

INSTALL_SCRIPT = "deploy/install.sh"
#: ``fail "MESSAGE" "NEXT"`` in install.sh: the message is the first argument.
FAIL_CALL = re.compile(r'\bfail "((?:[^"\\]|\\.)*)"')
SHELL_EXPANSION = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*")


def failure_message_problems(text: str, script: str) -> list[str]:
    """Every failure ``install.sh`` can print is quoted in the doc (as a code span), each shell expansion of the
    message shown as a placeholder such as ``<name>`` or as an example value."""
    spans = Markdown(text).code()
    problems: list[str] = []
    for message in FAIL_CALL.findall(script):
        parts = [part for part in re.split(f"({SHELL_EXPANSION.pattern})", message) if part]
        pattern = "".join(".+?" if SHELL_EXPANSION.fullmatch(part) else re.escape(part) for part in parts)
        if not any(re.fullmatch(pattern, span.strip()) for span in spans):
            problems.append(f"install.sh can fail with {message!r}, which the doc does not quote")
    return problems


# --- paths ---------------------------------------------------------------------------------------------------------


def path_problems(text: str) -> list[str]:
    """Every repository path named in code (and every relative link) exists in the working tree."""
    named = {path for code in Markdown(text).code() for path in REPO_PATH.findall(code)}
    named |= set(LINK.findall(text))
    missing = [path for path in named if not glob.glob(str(REPO / path.rstrip("/")))]
    return [f"{path} does not exist in the repository" for path in sorted(missing)]


# --- the real docs -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported() -> dict[str, dict[str, ExportedMetric]]:
    return daemon_metrics()


def test_every_setting_is_documented_with_its_default() -> None:
    assert settings_table_problems(read(INTEGRATION_DOC)) == []


@pytest.mark.parametrize("doc", DOCS)
def test_every_setting_named_is_one_the_daemons_read(doc: str) -> None:
    assert setting_token_problems(read(doc)) == []


def test_every_metric_is_documented_with_its_type_and_labels(exported: dict[str, dict[str, ExportedMetric]]) -> None:
    assert metrics_table_problems(read(INTEGRATION_DOC), exported) == []


@pytest.mark.parametrize("doc", DOCS)
def test_every_metric_named_is_exported(doc: str, exported: dict[str, dict[str, ExportedMetric]]) -> None:
    assert metric_token_problems(read(doc), exported) == []


def test_every_alert_has_its_runbook_section() -> None:
    alerts = alert_rules()
    assert len(alerts) == 11  # the eleven alerts of the deployment layout
    assert runbook_problems(read(INTEGRATION_DOC), alerts) == []


@pytest.mark.parametrize("doc", DOCS)
def test_every_p31ctl_command_exists(doc: str) -> None:
    assert p31ctl_commands(read(doc)), f"{doc} shows no p31ctl command"
    assert p31ctl_problems(read(doc), build_parser()) == []


@pytest.mark.parametrize("doc", DOCS)
def test_every_repo_path_exists(doc: str) -> None:
    assert path_problems(read(doc)) == []


@pytest.mark.parametrize("doc", DOCS)
def test_every_unit_directive_quoted_is_in_the_units(doc: str) -> None:
    assert unit_directive_problems(read(doc), unit_directives()) == []


def test_every_failure_of_install_sh_is_explained() -> None:
    script = read(INSTALL_SCRIPT)
    assert len(FAIL_CALL.findall(script)) >= 10
    assert failure_message_problems(read(DEPLOYMENT_DOC), script) == []


def test_the_deployment_doc_gives_the_tested_acl_rules() -> None:
    text = read(DEPLOYMENT_DOC)
    assert "PLACEHOLDER" not in text
    assert acl_problems(text, acl_users_of_the_security_tests()) == []


# --- the checks fail when a doc drifts -----------------------------------------------------------------------------


def drifted(old: str, new: str) -> str:
    """The integration doc with one exact edit, which must apply exactly once."""
    text = read(INTEGRATION_DOC)
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def test_a_wrong_default_a_missing_setting_and_an_unknown_one_are_caught() -> None:
    wrong_default = drifted("| `P31_MIN_CONF` | `0.65` |", "| `P31_MIN_CONF` | `0.6` |")
    assert any("P31_MIN_CONF" in p and "0.6" in p for p in settings_table_problems(wrong_default))
    row = next(line for line in read(INTEGRATION_DOC).splitlines() if line.startswith("| `GOV_BLOCK_MS` |"))
    missing = drifted(row + "\n", "")
    assert settings_table_problems(missing) == [
        "GovernorSettings reads GOV_BLOCK_MS, which no settings table of it documents"
    ]
    renamed = drifted("| `PROPOSE_KEY_TTL` |", "| `PROPOSE_KEY_TTL_SEC` |")
    assert "PROPOSE_KEY_TTL_SEC looks like a setting but no daemon reads it" in setting_token_problems(renamed)
    assert any("PROPOSE_KEY_TTL_SEC" in p for p in settings_table_problems(renamed))


def test_a_misnamed_metric_a_wrong_type_and_wrong_labels_are_caught(
    exported: dict[str, dict[str, ExportedMetric]],
) -> None:
    misnamed = drifted("| `p29_shadow_loops_total` |", "| `p29_shadow_loops` |")
    assert "p29_shadow_loops looks like a metric but no daemon exports it" in metric_token_problems(misnamed, exported)
    assert any("p29_shadow_loops_total" in p for p in metrics_table_problems(misnamed, exported))
    wrong = drifted("| `quantum_govern_pending` | gauge |", "| `quantum_govern_pending` | counter |")
    wrong = wrong.replace(
        "| `p32_eff_apply_total` | counter | `action`, `reason` |", "| `p32_eff_apply_total` | counter | `reason` |"
    )
    assert len(metrics_table_problems(wrong, exported)) == 2


def test_a_runbook_out_of_step_with_the_rules_is_caught() -> None:
    alerts = alert_rules()
    renamed = drifted("### P31RedisErrors\n", "### P31RedisError\n")
    assert sorted(runbook_problems(renamed, alerts)) == [
        "alert P31RedisErrors has no '### P31RedisErrors' section in the runbook",
        "runbook section 'P31RedisError' names no alert",
    ]
    changed = {**alerts, "P31DaemonDown": {**alerts["P31DaemonDown"], "for": "5m"}}
    assert runbook_problems(read(INTEGRATION_DOC), changed) == ["runbook section P31DaemonDown does not say `for: 5m`"]
    moved = {**alerts, "P31GovernorDeadLetter": {**alerts["P31GovernorDeadLetter"], "annotations": {"runbook": "x"}}}
    assert len(runbook_problems(read(INTEGRATION_DOC), moved)) == 1


def test_an_unknown_p31ctl_command_or_option_is_caught() -> None:
    parser = build_parser()
    assert p31ctl_problems("Run `p31ctl --json statuss`.", parser) == [
        "p31ctl has no subcommand 'statuss' (--json statuss)"
    ]
    assert p31ctl_problems("```\np31ctl report --sinse 1h | less\n```", parser) == [
        "p31ctl report: no option --sinse (report --sinse 1h)"
    ]
    assert p31ctl_problems("`/opt/quantum/p31/.venv/bin/p31ctl --env-file /x status --symbol A`", parser) == []


def test_a_missing_path_is_caught() -> None:
    assert path_problems("See `deploy/systemd/quantum-nothing.service` and [x](docs/none.md).") == [
        "deploy/systemd/quantum-nothing.service does not exist in the repository",
        "docs/none.md does not exist in the repository",
    ]


def test_acl_rules_other_than_the_tested_ones_are_caught() -> None:
    users = acl_users_of_the_security_tests()
    user = next(iter(users))
    changed = {**users, user: users[user] + " +flushall"}
    assert len(acl_problems(read(DEPLOYMENT_DOC), changed)) == 1


def test_a_unit_directive_the_units_do_not_have_is_caught() -> None:
    text = "The unit restarts after `RestartSec=10`, runs `Type=simple`; `P31_GOV_MODE=off` is a setting."
    assert len(unit_directive_problems(text, unit_directives())) == 2


def test_an_unexplained_failure_of_install_sh_is_caught() -> None:
    script = 'fail "release $RELEASE exploded at ${when:-dawn}" "next"\n'
    assert failure_message_problems("`release <name> exploded at <time>`", script) == []
    assert failure_message_problems("`release <name> exploded`", script) == [
        "install.sh can fail with 'release $RELEASE exploded at ${when:-dawn}', which the doc does not quote"
    ]
