"""Consul's own security for the harness's agents (tests, the demo, chaos, the bench): ACLs, default deny, one
token per role, and gossip encryption.

`ConsulSecurity(state_dir)` keeps, in the cluster's state directory, mode 0600:

* `consul-security.hcl`, every agent's extra configuration (`-config-file`): the gossip `encrypt` key and
  `acl { enabled = true, default_policy = "deny", ... }`;
* `consul-acl.json`: the management token (from Consul's bootstrap), and each role's and each agent's token
  (AccessorID and SecretID, chosen here once, so that a Consul that lost its state, a restarted dev agent, gets
  the same tokens again and the running processes' tokens work again).

`apply(consul)` bootstraps the ACL system if it was not yet, loads the policies of deploy/consul/policies/*.hcl
(docs/security.md), makes the roles' tokens, gives the anonymous token the observer policy (service and node
reads: clients find the nodes through Consul; nothing else) and each agent a token of its own (a node identity:
it may register its node) through its agent API. The product never does any of this: an operator does, once.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
POLICY_DIR = REPO_ROOT / "deploy" / "consul" / "policies"
# role -> its policy (a file of POLICY_DIR); `exchange-cli accounts` runs with the accounts token
ROLES = {"node": "node", "sequencer": "sequencer", "accounts": "accounts-admin", "observer": "observer"}
ANONYMOUS_TOKEN = "00000000-0000-0000-0000-000000000002"  # Consul's fixed AccessorID of the anonymous token
ANONYMOUS_POLICY = "observer"
DATACENTER = "dc1"


class ConsulAclError(RuntimeError):
    """Consul refused or failed a step of setting up its ACLs."""


@dataclass(frozen=True)
class _Answer:
    status: int
    body: Any


def _call(address: str, method: str, path: str, token: str | None = None, body: object = None,
          timeout: float = 5.0) -> _Answer:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{address}{path}", data=data, method=method)
    if token:
        request.add_header("X-Consul-Token", token)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        raw, status = error.read(), error.code
    try:
        return _Answer(status, json.loads(raw) if raw else None)
    except ValueError:
        return _Answer(status, raw.decode(errors="replace"))


def write_private(path: Path, content: str | bytes) -> None:
    """Writes `content` to `path`, readable by its owner only (created so: never world-readable, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(content.encode() if isinstance(content, str) else content)
    path.chmod(0o600)


class ConsulSecurity:
    """The ACL tokens and gossip key of one harness cluster, kept in its state directory."""

    def __init__(self, state_dir: Path) -> None:
        state_dir = state_dir.resolve()  # an agent runs in a directory of its own
        self.config_file = state_dir / "consul-security.hcl"
        self.state_file = state_dir / "consul-acl.json"
        if self.state_file.exists():
            self._state: dict[str, Any] = json.loads(self.state_file.read_text())
        else:  # every secret chosen now, once: a Consul that forgot them is given the same ones again
            self._state = {
                "gossip_key": base64.b64encode(secrets.token_bytes(32)).decode(),
                "management": None,
                "tokens": {role: self._new_token() for role in ROLES},
                "agents": {},
            }

    @staticmethod
    def _new_token() -> dict[str, str]:
        return {"AccessorID": str(uuid.uuid4()), "SecretID": str(uuid.uuid4())}

    @property
    def management_token(self) -> str:
        token = self._state["management"]
        if not token:
            raise ConsulAclError("Consul's ACLs are not bootstrapped yet")
        return str(token)

    def token(self, role: str) -> str:
        """The SecretID of `role`'s token (a key of ROLES)."""
        return str(self._state["tokens"][role]["SecretID"])

    def accessor(self, role: str) -> str:
        return str(self._state["tokens"][role]["AccessorID"])

    def write_config(self) -> Path:
        """The agents' configuration file (written before they start)."""
        write_private(self.config_file, (
            f'encrypt = "{self._state["gossip_key"]}"\n'
            "acl {\n"
            "  enabled = true\n"
            '  default_policy = "deny"\n'
            '  down_policy = "extend-cache"\n'
            "  enable_token_persistence = true\n"
            "}\n"
        ))
        self._save()
        return self.config_file

    def _save(self) -> None:
        write_private(self.state_file, json.dumps(self._state, indent=2) + "\n")

    # -- applying it to a running Consul -------------------------------------------------------------

    def apply(self, address: str, agents: Sequence[tuple[str, str]], timeout: float = 30.0) -> None:
        """Bootstraps (if needed) the ACL system of the Consul whose server answers at `address`, and makes the
        policies and tokens; `agents`: (HTTP address, node name) of every agent, each given its agent token.
        Idempotent: what exists is updated to what the repository says."""
        deadline = time.monotonic() + timeout
        self._bootstrap(address, deadline)
        management = self.management_token
        for policy in sorted(set(ROLES.values())):
            self._put_policy(address, management, policy)
        for role, policy in ROLES.items():
            self._put_token(address, management, self._state["tokens"][role], f"p2p-exchange {role}",
                            {"Policies": [{"Name": policy}]})
        answer = _call(address, "PUT", f"/v1/acl/token/{ANONYMOUS_TOKEN}", management, {
            "Description": "Anonymous Token: may read services and nodes (how clients find the exchange's nodes)",
            "Policies": [{"Name": ANONYMOUS_POLICY}]})
        self._check(answer, "giving the anonymous token the observer policy")
        for agent_address, node_name in agents:
            token = self._state["agents"].setdefault(node_name, self._new_token())
            self._put_token(address, management, token, f"agent {node_name}",
                            {"NodeIdentities": [{"NodeName": node_name, "Datacenter": DATACENTER}]})
            self._save()
            answer = _call(agent_address, "PUT", "/v1/agent/token/agent", management, {"Token": token["SecretID"]})
            self._check(answer, f"setting the agent token of {node_name}")

    def _bootstrap(self, address: str, deadline: float) -> None:
        while True:
            answer = _call(address, "PUT", "/v1/acl/bootstrap")
            if answer.status == 200:
                self._state["management"] = answer.body["SecretID"]
                self._save()
                return
            if answer.status == 403 and self._state["management"]:  # bootstrapped before: its token is ours
                if _call(address, "GET", "/v1/acl/token/self", self._state["management"]).status == 200:
                    return
            elif answer.status == 403:
                raise ConsulAclError(
                    f"Consul at {address} was bootstrapped already and its management token is not in "
                    f"{self.state_file}: stop the cluster and remove its Consul data directories to start afresh")
            if time.monotonic() > deadline:  # 500: no leader yet, or the ACL system still starting
                raise ConsulAclError(f"Consul at {address} did not bootstrap its ACLs: {answer.status} {answer.body}")
            time.sleep(0.2)

    def _put_policy(self, address: str, management: str, name: str) -> None:
        rules = (POLICY_DIR / f"{name}.hcl").read_text()
        found = _call(address, "GET", f"/v1/acl/policy/name/{name}", management)
        body = {"Name": name, "Description": f"p2p-exchange {name} (deploy/consul/policies/{name}.hcl)",
                "Rules": rules}
        if found.status == 200:
            answer = _call(address, "PUT", f"/v1/acl/policy/{found.body['ID']}", management, body)
        else:
            answer = _call(address, "PUT", "/v1/acl/policy", management, body)
        self._check(answer, f"writing the policy {name}")

    def _put_token(self, address: str, management: str, token: dict[str, str], description: str,
                   grants: dict[str, object]) -> None:
        body = {**token, "Description": description, **grants}
        if _call(address, "GET", f"/v1/acl/token/{token['AccessorID']}", management).status == 200:
            answer = _call(address, "PUT", f"/v1/acl/token/{token['AccessorID']}", management, body)
        else:
            answer = _call(address, "PUT", "/v1/acl/token", management, body)
        self._check(answer, f"writing the token {description}")

    @staticmethod
    def _check(answer: _Answer, what: str) -> None:
        if answer.status != 200:
            raise ConsulAclError(f"{what}: Consul answered {answer.status} {answer.body}")

    def revoke(self, address: str, role: str) -> None:
        """Deletes `role`'s token (what an operator does to a leaked one; the tests' "token removed")."""
        answer = _call(address, "DELETE", f"/v1/acl/token/{self.accessor(role)}", self.management_token)
        self._check(answer, f"deleting the token of {role}")
