"""TLS for the webhook: a CA and serving certificates, their Secret, caBundle injection, rotation.

Owns: key and certificate generation with ``cryptography``, storing them in a Secret, injecting
the CA into the webhook configurations, rotating before expiry, and the command-line options
``python -m certs`` and ``python -m webhook`` share (:mod:`certs.cli`).

May import: :mod:`kube` (every Kubernetes call goes through it) and :mod:`contracts` (the log
line).  Never :mod:`policies`, the webhook or the controller.
"""
