import django.utils.timezone
import worker_mode.models
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('async_tasks', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='asynctask',
            name='claim_token',
            field=models.CharField(blank=True, editable=False, max_length=32),
        ),
        migrations.AddField(
            model_name='asynctask',
            name='heartbeat_at',
            field=models.DateTimeField(blank=True, null=True, verbose_name='last heartbeat'),
        ),
        migrations.AddField(
            model_name='asynctask',
            name='host',
            field=models.CharField(blank=True, editable=False, max_length=100),
        ),
        migrations.AddField(
            model_name='asynctask',
            name='job_id',
            field=models.CharField(default=worker_mode.models.new_job_id, editable=False, max_length=64),
        ),
        migrations.AddField(
            model_name='asynctask',
            name='lease_expires_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='asynctask',
            name='pid',
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='asynctask',
            name='run_after',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name='asynctask',
            name='attempts',
            field=models.PositiveIntegerField(default=0, help_text='How many times a process claimed it.'),
        ),
        migrations.AlterField(
            model_name='asynctask',
            name='created_at',
            field=models.DateTimeField(db_index=True, default=django.utils.timezone.now, editable=False),
        ),
        migrations.AlterField(
            model_name='asynctask',
            name='node_name',
            field=models.CharField(blank=True, help_text='The node that claimed it.', max_length=255, verbose_name='node'),
        ),
        migrations.AlterField(
            model_name='asynctask',
            name='status',
            field=models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('succeeded', 'Succeeded'), ('failed', 'Failed'), ('canceled', 'Canceled')], default='queued', max_length=20),
        ),
        migrations.AlterField(
            model_name='asynctask',
            name='worker',
            field=models.CharField(blank=True, help_text='The process that claimed it.', max_length=255),
        ),
        # Rows queued before this migration keep the rq job id their message carries; the
        # claim vocabulary is worker_mode's (queued, running) for every service.
        migrations.RunSQL(
            "UPDATE async_tasks_asynctask SET job_id = 'async-task-' || id, "
            "status = CASE WHEN status = 'pending' THEN 'queued' ELSE status END",
            reverse_sql="UPDATE async_tasks_asynctask SET status = 'pending' WHERE status = 'queued'",
        ),
    ]
