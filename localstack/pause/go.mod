module github.com/agentops-io/agentops-operator/localstack/pause

go 1.24.0
