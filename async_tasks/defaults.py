"""Default values of the async_tasks settings; each can be set in the site's settings."""

#: Models users may import and export, by label, with the fields allowed (in column order) and the
#: identifier field used to find duplicates (a unique field; "" for none).
ASYNC_TASKS_MODELS: dict = {}

#: Alias in STORAGES of the private storage for uploads, results and error reports. Not served by
#: a static/media URL: files leave only through the authenticated download view. For a cluster,
#: point it at a storage every node shares (S3-compatible, NFS).
ASYNC_TASKS_STORAGE = "async_tasks"

#: Largest accepted upload, in bytes.
ASYNC_TASKS_MAX_UPLOAD_SIZE = 200 * 1024 * 1024

#: An XLSX is refused when its members would unpack to more than this many bytes...
ASYNC_TASKS_XLSX_MAX_UNPACKED = 2 * 1024 * 1024 * 1024

#: ...or when one member unpacks to more than this many times its packed size (a zip bomb).
ASYNC_TASKS_XLSX_MAX_RATIO = 200

#: Rows written per transaction; progress and cancel are checked once per batch.
ASYNC_TASKS_BATCH_SIZE = 2000

#: Seconds a finished task and its files are kept before ``cleanup`` deletes them.
ASYNC_TASKS_EXPIRY = 7 * 24 * 3600

#: A task whose owner is gone (process, node, lease): "retry" (run it again from the start of the
#: file) or "fail" (end it with the reason). Shared vocabulary of worker_mode's claimed work.
ASYNC_TASKS_RECOVERY = "fail"

#: Runs of a task (first run and retries) before recovery fails it for good.
ASYNC_TASKS_MAX_ATTEMPTS = 3

#: Seconds between clean-ups of expired tasks and their files.
ASYNC_TASKS_CLEANUP_INTERVAL = 300.0
