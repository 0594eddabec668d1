"""The gRPC shell a service is served through: server, job RPCs, clients, auth, TLS, health."""
