// response_mode=form_post: hand the authorization response to the client without a click.
document.getElementById("form-post").submit();
