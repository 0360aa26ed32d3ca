from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('worker_mode', '0001_initial'),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='cluster',
            options={'default_permissions': ('view',), 'managed': False, 'permissions': [('control_queues', 'Can empty, requeue, delete and stop queued jobs')], 'verbose_name': 'cluster', 'verbose_name_plural': 'cluster'},
        ),
    ]
