"""Process roles: the loops that decide when things happen. `build_role` is the one branch on role."""
from __future__ import annotations

from fedbiobert.roles.client import ClientProcess
from fedbiobert.roles.server import ServerProcess
from fedbiobert.topology import Role


def build_role(session, algorithm):
    if session.role is Role.SERVER:
        return ServerProcess(session, algorithm)
    return ClientProcess(session, algorithm)


__all__ = ["ClientProcess", "ServerProcess", "build_role"]
