"""The local stack for the demo and for users without infrastructure: an S3 server, Label Studio and a Prefect
server with its process worker and S3 poller, all on loopback."""
