"""The local stack's process supervision: `modelgate up` (stack.py) starts and watches Redis,
the issuer, the panel, a worker, the gateway and the runtime on 127.0.0.1; processes.py holds
the process-group helpers, redis_server.py the embedded Redis."""
