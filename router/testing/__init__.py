"""What tests, benchmarks and the demo share: real PostgreSQL clusters started in temp dirs
(pgcluster), deployments of the router on them (deploy, escape), an in-process router (routerthread),
child processes, waiting helpers, virtual time, and connections without a server for pool unit
tests (fakeconnections).

Never imported by the router itself.
"""
