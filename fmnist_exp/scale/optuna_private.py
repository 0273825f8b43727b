"""Every use of Optuna's private modules, in one place (Optuna is pinned to >=5,<6 for them).

Optuna exports ``run_grpc_proxy_server``, which owns its server and never returns, and no
heartbeat base class: the storage proxy here adds the heartbeat and a clean stop, so it needs the
proxy's service class and messages, the heartbeat classes, and the cached storage that
``get_storage`` wraps an RDB storage in (the proxy reads stale trials and its engine through it).
The client opens its own channel (keepalive, failover), so it needs the client's trial cache;
the proxy's reaper asks the heartbeat table which running trials never beat (:func:`never_beaten`).
tests/test_storage.py imports this module, so an Optuna that moved any of them fails that test
with these names, not a worker mid-study.
"""

import sqlalchemy
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage as CachedStorage
from optuna.storages._grpc.auto_generated import api_pb2, api_pb2_grpc
from optuna.storages._grpc.client import GrpcClientCache
from optuna.storages._grpc.servicer import OptunaStorageProxyService
from optuna.storages._heartbeat import BaseHeartbeat, HeartbeatThread
from optuna.storages._rdb.models import TrialHeartbeatModel, TrialModel
from optuna.trial import TrialState

__all__ = ["BaseHeartbeat", "CachedStorage", "GrpcClientCache", "HeartbeatThread", "OptunaStorageProxyService",
           "TrialHeartbeatModel", "TrialModel", "api_pb2", "api_pb2_grpc", "never_beaten"]


def never_beaten(storage: RDBStorage, study_id: int) -> list[int]:
    """Ids of the study's RUNNING trials with no heartbeat recorded at all: Optuna's stale-trial
    query passes them over, so a trial whose worker never beat would stay RUNNING for ever."""
    query = (sqlalchemy.select(TrialModel.trial_id)
             .outerjoin(TrialHeartbeatModel, TrialHeartbeatModel.trial_id == TrialModel.trial_id)
             .where(TrialModel.study_id == study_id, TrialModel.state == TrialState.RUNNING,
                    TrialHeartbeatModel.trial_heartbeat_id.is_(None)))
    with storage.engine.connect() as conn:
        return list(conn.scalars(query))
