"""agentops-operator installed into the real node (``kubectl apply -k``) and used as a user would."""
