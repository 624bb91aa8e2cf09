module.exports = (who) => `hello ${who}, from a private package`;
