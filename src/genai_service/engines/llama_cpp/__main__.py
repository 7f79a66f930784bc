"""The engine process's entry point (`python -m genai_service.engines.llama_cpp FD_IN FD_OUT`),
started by `client.EngineProcess`: the two pipes' file descriptors, then the config arrives as
the first message."""

import sys
from multiprocessing.connection import Connection

from genai_service.engines.llama_cpp import core

commands = Connection(int(sys.argv[1]), writable=False)
events = Connection(int(sys.argv[2]), readable=False)
core.main(commands.recv(), commands, events)
