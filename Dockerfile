FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY agentflow ./agentflow
RUN pip install --no-cache-dir ".[example]"
COPY example_project ./example_project
COPY manage.py ./
ENV PYTHONUNBUFFERED=1
EXPOSE 8000
