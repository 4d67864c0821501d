#!/bin/bash
# LocalStack ready hook: the resources AWS mode expects.
set -euo pipefail
awslocal s3 mb s3://mqc3-jobs
awslocal dynamodb create-table --table-name mqc3-jobs --billing-mode PAY_PER_REQUEST \
  --attribute-definitions AttributeName=job_id,AttributeType=S AttributeName=status,AttributeType=S \
    AttributeName=owner_fingerprint,AttributeType=S AttributeName=submitted_at,AttributeType=S \
    AttributeName=submitted_month,AttributeType=S \
  --key-schema AttributeName=job_id,KeyType=HASH \
  --global-secondary-indexes \
    '[{"IndexName":"status-index","KeySchema":[{"AttributeName":"status","KeyType":"HASH"}],"Projection":{"ProjectionType":"ALL"}},{"IndexName":"owner-index","KeySchema":[{"AttributeName":"owner_fingerprint","KeyType":"HASH"},{"AttributeName":"submitted_at","KeyType":"RANGE"}],"Projection":{"ProjectionType":"ALL"}},{"IndexName":"submitted-index","KeySchema":[{"AttributeName":"submitted_month","KeyType":"HASH"},{"AttributeName":"submitted_at","KeyType":"RANGE"}],"Projection":{"ProjectionType":"ALL"}}]'
awslocal dynamodb update-time-to-live --table-name mqc3-jobs \
  --time-to-live-specification Enabled=true,AttributeName=job_expiry
awslocal ssm put-parameter --name /mqc3/job_bucket_name --type String --value mqc3-jobs
awslocal ssm put-parameter --name /mqc3/job_table_name --type String --value mqc3-jobs
# The backend status table: the standalone default, from its one file,
# backend_manager/default_backends.toml, which compose.yaml mounts at the path below
# (BACKENDS_TOML names another file).
backends=$(cat "${BACKENDS_TOML:-/etc/localstack/init/default_backends.toml}")
awslocal ssm put-parameter --name /mqc3/backend_status --type String --value "$backends"
