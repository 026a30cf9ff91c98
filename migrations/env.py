"""Alembic environment: migrates the database named by the caller or by TALLY_DATABASE_URL."""

from alembic import context
from sqlalchemy import create_engine

from shared.models import Base
from shared.platform.config import load_settings
from shared.platform.migrate import include_object

url = context.config.get_main_option("sqlalchemy.url") or load_settings().database_url

if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection, target_metadata=Base.metadata, include_object=include_object
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
