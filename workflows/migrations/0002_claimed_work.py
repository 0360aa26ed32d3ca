import django.utils.timezone
import worker_mode.models
import worker_mode.storable
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('workflows', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='execution',
            name='claim_token',
            field=models.CharField(blank=True, editable=False, max_length=32),
        ),
        migrations.AddField(
            model_name='execution',
            name='heartbeat_at',
            field=models.DateTimeField(blank=True, null=True, verbose_name='last heartbeat'),
        ),
        migrations.AddField(
            model_name='execution',
            name='host',
            field=models.CharField(blank=True, editable=False, max_length=100),
        ),
        migrations.AddField(
            model_name='execution',
            name='job_id',
            field=models.CharField(default=worker_mode.models.new_job_id, editable=False, max_length=64),
        ),
        migrations.AddField(
            model_name='execution',
            name='pid',
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name='execution',
            name='attempts',
            field=models.PositiveIntegerField(default=0, help_text='How many times a process claimed it.'),
        ),
        migrations.AlterField(
            model_name='execution',
            name='context',
            field=models.JSONField(blank=True, default=dict, validators=[worker_mode.storable.validate_storable_json]),
        ),
        migrations.AlterField(
            model_name='execution',
            name='created_at',
            field=models.DateTimeField(db_index=True, default=django.utils.timezone.now, editable=False),
        ),
        migrations.AlterField(
            model_name='execution',
            name='node_name',
            field=models.CharField(blank=True, help_text='The node that claimed it.', max_length=255, verbose_name='node'),
        ),
        migrations.AlterField(
            model_name='execution',
            name='status',
            field=models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('resolved', 'Resolved'), ('failed', 'Failed'), ('error', 'Error'), ('aborted', 'Aborted'), ('canceled', 'Canceled')], default='queued', max_length=20),
        ),
        migrations.AlterField(
            model_name='execution',
            name='worker',
            field=models.CharField(blank=True, help_text='The process that claimed it.', max_length=255),
        ),
        migrations.AlterField(
            model_name='node',
            name='config',
            field=models.JSONField(blank=True, default=dict, validators=[worker_mode.storable.validate_storable_json]),
        ),
        migrations.AlterField(
            model_name='workflow',
            name='trigger_config',
            field=models.JSONField(blank=True, default=dict, validators=[worker_mode.storable.validate_storable_json]),
        ),
        # Rows queued before this migration keep the rq job id their message carries; the
        # claim vocabulary is worker_mode's (queued, running) for every service.
        migrations.RunSQL(
            "UPDATE workflows_execution SET job_id = 'workflow-execution-' || id, "
            "status = CASE WHEN status = 'started' THEN 'running' ELSE status END",
            reverse_sql="UPDATE workflows_execution SET status = 'started' WHERE status = 'running'",
        ),
    ]
