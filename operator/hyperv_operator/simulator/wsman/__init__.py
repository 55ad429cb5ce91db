"""The simulated host's WS-Management front end: SOAP over HTTP(S), PSRP through psrpcore's server side."""

from hyperv_operator.simulator.wsman.psrp import COMMON_PARAMETERS, Executor, ReceivedPipeline
from hyperv_operator.simulator.wsman.server import WSManServer

__all__ = ["COMMON_PARAMETERS", "Executor", "ReceivedPipeline", "WSManServer"]
