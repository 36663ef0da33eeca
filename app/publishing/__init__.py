"""The APIs page (publishing): published gateway APIs, their revisions, rollback and traffic
(the REST API is app/api)."""
