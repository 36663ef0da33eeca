"""The APIs page: published gateway APIs, their revisions, rollback and traffic."""
