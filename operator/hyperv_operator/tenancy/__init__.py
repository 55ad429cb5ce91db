"""Multi-tenancy: which namespaces may use which host, and where on a host a VM may read and write.

Pure decisions only (no I/O): the admission webhook and the controller call the same functions, so
a VM the webhook would refuse is also refused by the controller when the webhook is not installed.
"""
