"""The local stack for the demo and for users without infrastructure: an S3 server and Label Studio on loopback."""
